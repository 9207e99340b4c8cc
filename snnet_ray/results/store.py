"""Storage and aggregation of SN-Net evaluation results (SQLAlchemy 2).

Evaluation workers send partial counts per (run, checkpoint, config, shard); the store keeps one
row per key and upserts on it, so a replayed or retried shard replaces its record instead of
counting twice. A config's accuracy at a checkpoint is exact: the sum of correct predictions over
its shards divided by the sum of samples. Beside the counts it keeps per run the experiment config,
Tune trial and hyperparameters, and per config its name, anchors, GMACs, params and latency per
device.

Backends: a SQLite file by default (WAL journal, a long busy timeout and `BEGIN IMMEDIATE` write
transactions, so many writer threads and processes queue instead of failing), and PostgreSQL with
the psycopg 3 driver on clusters (`postgresql+psycopg://user@host/db`).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from snnet_ray.results.pareto import pareto_front
from snnet_ray.results.redact import redact
from snnet_ray.results.retry import retry
from snnet_ray.results.schema import (
    MAX_TOTAL_SAMPLES,
    CheckpointInfo,
    ConfigInfo,
    ConfigResult,
    EvalRecord,
    LatencyRecord,
    NetworkRecord,
    ResultsNotFound,
    ResultsTable,
    RunInfo,
    RunSummary,
    checkpoint_step,
)

__all__ = ["DEFAULT_DB_URL", "ResultsStore", "normalize_db_url"]

DEFAULT_DB_URL = "sqlite:///snnet-results.db"
_SCHEMA_LOCK = 0x5A4E4554  # any constant shared by every process creating the tables

metadata = MetaData()

runs_table = Table(
    "runs",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("experiment", JSON(none_as_null=True)),
    Column("trial_id", String(200)),
    Column("hyperparameters", JSON(none_as_null=True)),
    Column("status", String(64)),
    Column("created", Float),
    Column("updated", Float),
)

configs_table = Table(
    "configs",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("config_id", Integer, primary_key=True),
    Column("name", String(200)),
    Column("kind", String(16)),
    Column("anchors", JSON(none_as_null=True)),
    Column("gmacs", Float),
    Column("params", BigInteger),
)

evals_table = Table(
    "evals",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("checkpoint", String(200), primary_key=True),
    Column("config_id", Integer, primary_key=True),
    Column("shard", String(200), primary_key=True),
    Column("samples", Integer, nullable=False),
    Column("top1_correct", Integer, nullable=False),
    Column("top5_correct", Integer, nullable=False),
    Column("loss_sum", Float),
    Column("worker", String(200)),
    Column("time", Float),
    Column("updated", Float, nullable=False),
)

latency_table = Table(
    "latency",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("config_id", Integer, primary_key=True),
    Column("device", String(200), primary_key=True),
    Column("latency_ms", Float, nullable=False),
    Column("updated", Float, nullable=False),
)

# One row per (run, worker): what each training worker measured of the network at start.
network_table = Table(
    "network",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("worker", String(200), primary_key=True),
    Column("record", JSON, nullable=False),
    Column("updated", Float, nullable=False),
)


class ResultsStore:
    """Evaluation records, configs, latencies and runs in one SQL database.

    `db_url` is a SQLAlchemy URL (`sqlite:///path.db`, `postgresql+psycopg://...`) or a plain file
    path (taken as SQLite). Thread-safe; several processes may share one database.
    """

    def __init__(self, db_url: str | os.PathLike[str] = DEFAULT_DB_URL, *, echo: bool = False):
        self.url = normalize_db_url(db_url)
        self.backend = make_url(self.url).get_backend_name()
        self.engine = _make_engine(self.url, echo=echo)
        # Write transactions take SQLite's write lock up front (see _make_engine).
        self._writer = self.engine.execution_options(snnet_write=True)
        _create_tables(self._writer)

    def __repr__(self) -> str:
        return f"ResultsStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ---- writes ----------------------------------------------------------------------------

    def register_run(self, info: RunInfo) -> None:
        """Create a run or update the fields given (None keeps what is stored)."""
        now = time.time()
        row = info.model_dump()
        row["created"] = row["created"] or now
        row["updated"] = now
        with self._writer.begin() as conn:
            stmt = _insert(conn, runs_table).values(row)
            keep = {c: func.coalesce(stmt.excluded[c], runs_table.c[c]) for c in
                    ("experiment", "trial_id", "hyperparameters", "status")}
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["run"], set_={**keep, "updated": stmt.excluded.updated}
            ))

    def put_configs(self, run: str, configs: Iterable[ConfigInfo]) -> int:
        """Record what each config is and costs; replaces earlier descriptions of the same ids."""
        rows = {c.config_id: {"run": run, **c.model_dump()} for c in configs}
        if not rows:
            return 0
        with self._writer.begin() as conn:
            self._ensure_runs(conn, [run])
            _upsert(conn, configs_table, [rows[k] for k in sorted(rows)], ("run", "config_id"))
        return len(rows)

    def ingest(self, records: Iterable[EvalRecord]) -> int:
        """Upsert eval records by (run, checkpoint, config_id, shard); returns how many keys."""
        now = time.time()
        # Last one wins inside a batch too; sorted keys keep concurrent PostgreSQL upserts from
        # locking rows in different orders (deadlocks).
        latest = {r.key: r for r in records}
        if not latest:
            return 0
        rows = [{**latest[k].model_dump(), "updated": now} for k in sorted(latest)]
        with self._writer.begin() as conn:
            self._ensure_runs(conn, sorted({r["run"] for r in rows}))
            _upsert(conn, evals_table, rows, ("run", "checkpoint", "config_id", "shard"))
            # Inside the transaction: a batch that would take a config's summed samples past the
            # bound is rolled back whole, so every stored sum stays exact and in range.
            self._check_totals(conn, {(r["run"], r["checkpoint"], r["config_id"]) for r in rows})
        return len(rows)

    def put_latency(self, records: Iterable[LatencyRecord]) -> int:
        """Upsert latencies by (run, config_id, device)."""
        now = time.time()
        latest = {(r.run, r.config_id, r.device): r for r in records}
        if not latest:
            return 0
        rows = [{**latest[k].model_dump(), "updated": now} for k in sorted(latest)]
        with self._writer.begin() as conn:
            self._ensure_runs(conn, sorted({r["run"] for r in rows}))
            _upsert(conn, latency_table, rows, ("run", "config_id", "device"))
        return len(rows)

    def put_network(self, records: Iterable[NetworkRecord]) -> int:
        """Upsert network checks by (run, worker): a restarted worker replaces its record."""
        now = time.time()
        latest = {(r.run, r.worker): r for r in records}
        if not latest:
            return 0
        rows = [{"run": k[0], "worker": k[1], "record": latest[k].model_dump(mode="json"), "updated": now}
                for k in sorted(latest)]
        with self._writer.begin() as conn:
            self._ensure_runs(conn, sorted({r["run"] for r in rows}))
            _upsert(conn, network_table, rows, ("run", "worker"))
        return len(rows)

    # ---- reads -----------------------------------------------------------------------------

    def network(self, run: str) -> list[NetworkRecord]:
        """The run's network checks, one per worker, in worker order."""
        n = network_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(n.worker, n.record).where(n.run == run)).all()
            if not rows and not self._run_exists(conn, run):
                raise self._unknown_run(run, conn)
        records = [NetworkRecord.model_validate(record) for _, record in rows]
        return sorted(records, key=lambda r: (len(r.worker), r.worker))  # rank2 before rank10

    def runs(self) -> list[RunSummary]:
        """Every run, newest first, with its checkpoints and the best top-1 of the latest one."""
        with self.engine.connect() as conn:
            infos = conn.execute(select(runs_table).order_by(runs_table.c.created.desc())).mappings().all()
            checkpoints = self._checkpoint_infos(conn, None)
            summaries = []
            for info in infos:
                cks = checkpoints.get(info["run"], [])
                fields = {k: info[k] for k in RunSummary.model_fields if k in info}
                # Rows written before secrets were redacted on the way in are redacted on the way out.
                fields["experiment"] = redact(fields.get("experiment"))
                fields["hyperparameters"] = redact(fields.get("hyperparameters"))
                summary = RunSummary(**fields)
                summary.checkpoints = cks
                if cks:
                    summary.latest = cks[-1].checkpoint
                    rows = self._aggregate(conn, info["run"], summary.latest)
                    summary.configs = sum(r.top1 is not None for r in rows)
                    summary.best_top1 = max((r.top1 for r in rows if r.top1 is not None), default=None)
                summaries.append(summary)
        return summaries

    def get_run(self, run: str) -> RunSummary:
        for summary in self.runs():
            if summary.run == run:
                return summary
        raise self._unknown_run(run)

    def checkpoints(self, run: str) -> list[str]:
        """The run's evaluated checkpoints, oldest first ("final" last)."""
        with self.engine.connect() as conn:
            return [c.checkpoint for c in self._checkpoint_infos(conn, run).get(run, [])]

    def done_shards(self, run: str, checkpoint: str) -> dict[str, int]:
        """Per validation shard, how many configs have a record (to resume an evaluation)."""
        e = evals_table.c
        query = (
            select(e.shard, func.count())
            .where(e.run == run, e.checkpoint == checkpoint)
            .group_by(e.shard)
        )
        with self.engine.connect() as conn:
            return {shard: int(n) for shard, n in conn.execute(query)}

    def table(self, run: str, checkpoint: str | None = None) -> ResultsTable:
        """Per-config accuracies and costs at `checkpoint` (default: the latest one).

        Configs that are described but not evaluated yet appear with no accuracy.
        """
        with self.engine.connect() as conn:
            checkpoints = [c.checkpoint for c in self._checkpoint_infos(conn, run).get(run, [])]
            if checkpoint is None:
                if not checkpoints and not self._run_exists(conn, run):
                    raise self._unknown_run(run, conn)
                checkpoint = checkpoints[-1] if checkpoints else None
            elif checkpoint not in checkpoints:
                known = ", ".join(checkpoints) or "none evaluated yet"
                if not checkpoints and not self._run_exists(conn, run):
                    raise self._unknown_run(run, conn)
                raise ResultsNotFound(f"run {run!r} has no checkpoint {checkpoint!r} (known: {known})")
            rows = self._aggregate(conn, run, checkpoint)
        for row in pareto_front(rows, "gmacs"):
            row.frontier = True
        return ResultsTable(run=run, checkpoint=checkpoint, checkpoints=checkpoints, rows=rows)

    def records(self, run: str, checkpoint: str | None = None) -> list[EvalRecord]:
        """The raw per-shard records of a run (all checkpoints unless one is given)."""
        e = evals_table.c
        query = select(*[e[name] for name in EvalRecord.model_fields]).where(e.run == run)
        if checkpoint is not None:
            query = query.where(e.checkpoint == checkpoint)
        query = query.order_by(e.checkpoint, e.config_id, e.shard)
        with self.engine.connect() as conn:
            return [EvalRecord.model_validate(dict(m)) for m in conn.execute(query).mappings()]

    # ---- helpers ---------------------------------------------------------------------------

    def _check_totals(self, conn: Any, keys: set[tuple[str, str, int]]) -> None:
        e = evals_table.c
        for run, checkpoint in sorted({(r, ck) for r, ck, _ in keys}):
            ids = sorted(c for r, ck, c in keys if (r, ck) == (run, checkpoint))
            query = (
                select(e.config_id, func.sum(e.samples))
                .where(e.run == run, e.checkpoint == checkpoint, e.config_id.in_(ids))
                .group_by(e.config_id)
            )
            for config_id, total in conn.execute(query):
                if total is not None and int(total) > MAX_TOTAL_SAMPLES:
                    raise ValueError(
                        f"config {config_id} of run {run!r} at {checkpoint!r} would sum {int(total)} samples, "
                        f"over the limit of {MAX_TOTAL_SAMPLES}; the batch was not stored"
                    )

    def _aggregate(self, conn: Any, run: str, checkpoint: str | None) -> list[ConfigResult]:
        e, c, lt = evals_table.c, configs_table.c, latency_table.c
        sums: dict[int, Any] = {}
        if checkpoint is not None:
            query = (
                select(
                    e.config_id,
                    func.sum(e.samples),
                    func.sum(e.top1_correct),
                    func.sum(e.top5_correct),
                    func.sum(e.loss_sum),
                    func.count(e.loss_sum),
                    func.count(),
                )
                .where(e.run == run, e.checkpoint == checkpoint)
                .group_by(e.config_id)
            )
            sums = {row[0]: row[1:] for row in conn.execute(query)}
        described = conn.execute(select(configs_table).where(c.run == run)).mappings()
        infos = {m["config_id"]: m for m in described}
        latency: dict[int, dict[str, float]] = defaultdict(dict)
        measured = conn.execute(select(lt.config_id, lt.device, lt.latency_ms).where(lt.run == run))
        for cfg, device, ms in measured:
            latency[cfg][device] = ms
        rows = []
        for cfg in sorted(set(sums) | set(infos)):
            info = infos.get(cfg, {})
            row = ConfigResult(
                config_id=cfg,
                name=info.get("name") or "",
                kind=info.get("kind") or "stitch",
                anchors=info.get("anchors") or [],
                gmacs=info.get("gmacs"),
                params=info.get("params"),
                latency_ms=dict(sorted(latency.get(cfg, {}).items())),
            )
            if cfg in sums:
                samples, top1, top5, loss, n_loss, n_shards = (0 if v is None else v for v in sums[cfg])
                row.samples, row.shards = int(samples), int(n_shards)
                if samples:
                    row.top1 = 100.0 * int(top1) / int(samples)
                    row.top5 = 100.0 * int(top5) / int(samples)
                    row.loss = float(loss) / int(samples) if n_loss == n_shards else None
            rows.append(row)
        return rows

    def _checkpoint_infos(self, conn: Any, run: str | None) -> dict[str, list[CheckpointInfo]]:
        e = evals_table.c
        query = select(
            e.run,
            e.checkpoint,
            func.count(func.distinct(e.config_id)),
            func.count(func.distinct(e.shard)),
            func.max(e.updated),
        ).group_by(e.run, e.checkpoint)
        if run is not None:
            query = query.where(e.run == run)
        out: dict[str, list[CheckpointInfo]] = defaultdict(list)
        for r, ck, n_cfg, n_shard, updated in conn.execute(query):
            out[r].append(CheckpointInfo(checkpoint=ck, configs=n_cfg, shards=n_shard, updated=updated))
        for cks in out.values():
            cks.sort(key=lambda ck: (checkpoint_step(ck.checkpoint), ck.updated))
        return out

    def _ensure_runs(self, conn: Any, runs: Sequence[str]) -> None:
        # Records may arrive before (or without) register_run: create a bare run row.
        now = time.time()
        stmt = _insert(conn, runs_table).on_conflict_do_nothing(index_elements=["run"])
        conn.execute(stmt, [{"run": r, "created": now, "updated": now} for r in runs])

    def _run_exists(self, conn: Any, run: str) -> bool:
        return conn.execute(select(runs_table.c.run).where(runs_table.c.run == run)).first() is not None

    def _unknown_run(self, run: str, conn: Any = None) -> ResultsNotFound:
        query = select(runs_table.c.run).order_by(runs_table.c.created.desc()).limit(10)
        if conn is None:
            with self.engine.connect() as fresh:
                known = [r for (r,) in fresh.execute(query)]
        else:
            known = [r for (r,) in conn.execute(query)]
        hint = f"known runs: {', '.join(known)}" if known else "the store holds no run yet"
        return ResultsNotFound(f"unknown run {run!r}; {hint}")


def normalize_db_url(db_url: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a file path; `postgresql://` gets the psycopg 3 driver."""
    text = os.fspath(db_url).strip()
    if not text:
        raise ValueError("empty database URL: give sqlite:///FILE, a file path, or postgresql+psycopg://...")
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        if path.is_dir():
            raise ValueError(f"database path {path} is a directory: give a file such as {path}/results.db")
        return f"sqlite:///{path}"
    for prefix in ("postgres://", "postgresql://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix):]
    url = make_url(text)
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r} in {text!r}: use sqlite:/// or postgresql+psycopg://")
    if backend == "sqlite" and url.database and url.database != ":memory:":
        # Absolute, so the same URL means the same file in a Serve replica or another process.
        path = Path(url.database).expanduser().resolve()
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {path.parent} for the SQLite database does not exist: create it")
        return url.set(database=str(path)).render_as_string(hide_password=False)
    return text


def _make_engine(url: str, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=8, max_overflow=24)
    memory = parsed.database in (None, "", ":memory:")
    pooling: dict[str, Any] = {"poolclass": StaticPool}
    if not memory:
        pooling = {"pool_size": 8, "max_overflow": 24, "pool_timeout": 120}
    engine = create_engine(
        url, echo=echo, connect_args={"timeout": 60, "check_same_thread": False}, **pooling
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module, so that BEGIN is ours (below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes can fail at once with SQLITE_BUSY when
        # another writer got in between (the busy timeout does not apply); IMMEDIATE queues instead.
        immediate = conn.get_execution_options().get("snnet_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _create_tables(writer: Engine) -> None:
    # Many workers may open a fresh database at once; CREATE TABLE is not safe to race (PostgreSQL
    # fails on its catalog's unique index), so creation holds a lock: SQLite's write lock
    # (BEGIN IMMEDIATE) or a PostgreSQL advisory lock.
    def create() -> None:
        with writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)

    retry(create, on=DBAPIError, attempts=5, backoff=0.2)


def _insert(conn: Any, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _upsert(conn: Any, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={col.name: stmt.excluded[col.name] for col in table.columns if col.name not in keys},
    )
    conn.execute(stmt, rows)
