"""Evaluation: one pass over the data scores every config; distributed over Ray workers."""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "ConfigCounts": ".one_pass",
        "count_predictions": ".one_pass",
        "evaluate_batch": ".one_pass",
        "evaluate_batch_by_config": ".one_pass",
        "ShardCounts": ".evaluator",
        "evaluate_shards": ".evaluator",
        "to_records": ".evaluator",
        "total_counts": ".evaluator",
        "EvalRequest": ".distributed",
        "evaluate_distributed": ".distributed",
        "register_configs": ".distributed",
        "resolve_eval_configs": ".select",
        "spanning_configs": ".select",
    },
)
