"""Training: stitch samplers, the SN-Net loss, optimizer groups, the DeepSpeed engine and checkpoints.

The Ray Train worker loop assembles these parts: `SamplerConfig.build` (which config each rank
trains), `build_optimizer` / `build_scheduler`, `DeepSpeedConfig` + `build_engine` (correct with
ranks on different configs), `optimizer_step`, `SNNetLoss`, and `report_checkpoint` /
`restore_checkpoint` (or `save_checkpoint` / `load_checkpoint`: resharding, any world size) over any
`Stateful`; the worker runs under Ray (`RayContext`) or plain torch.distributed (`LocalContext`,
`run_local`). Names are imported on first use.
"""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "RandomState": ".checkpoint",
        "Stateful": ".checkpoint",
        "TrainProgress": ".checkpoint",
        "report_checkpoint": ".checkpoint",
        "restore_checkpoint": ".checkpoint",
        "save_checkpoint": ".checkpoint",
        "load_checkpoint": ".checkpoint",
        "read_tensors": ".checkpoint",
        "LocalContext": ".context",
        "RayContext": ".context",
        "run_local": ".local",
        "DeepSpeedConfig": ".deepspeed_config",
        "GlobalOrderGradients": ".engine",
        "build_engine": ".engine",
        "optimizer_step": ".engine",
        "unwrap": ".engine",
        "LossConfig": ".loss",
        "SNNetLoss": ".loss",
        "load_teacher": ".loss",
        "OptimConfig": ".optim",
        "build_optimizer": ".optim",
        "build_scheduler": ".optim",
        "SamplerConfig": ".samplers",
        "StitchSampler": ".samplers",
        "all_reduce_counts": ".samplers",
        "build_sampler": ".samplers",
        "list_samplers": ".samplers",
    },
)
