"""The config: one schema per group (the dataclasses below, registered with Hydra's ConfigStore as
`<group>/schema`), the values in conf/ (each group file starts from its schema: `defaults: [schema, _self_]`).

Composing validates every value against its schema's type (`engine.limits.max_k=abc` is refused at once,
with Hydra's one-line error) and refuses unknown keys. The dataclasses carry no default values but for the
optional keys (None: unset) - the values live in YAML only. The typed objects the platform's parts use are
these dataclasses, built from the composed config with `typed(cfg.<group>)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from ebr.home import conf_dir, folder_dataset, sim_dataset

# ----- the engine (conf/engine/default.yaml, under the key `engine`)


@dataclass(unsafe_hash=True)  # a key of the parser's cache
class Limits:
    """Bounds on one query (the parser's and the planner's)."""

    max_query_chars: int = MISSING
    max_depth: int = MISSING
    max_nodes: int = MISSING
    max_nprobe: int = MISSING
    max_k: int = MISSING
    default_nprobe: int = MISSING
    max_rerank: int = MISSING
    max_expanded_nodes: int = MISSING
    max_query_terms: int = MISSING
    max_term_chars: int = MISSING


@dataclass
class ResultsConfig:
    default_limit: int = MISSING
    max_limit: int = MISSING
    order: str = MISSING


@dataclass
class StoreConfig:
    """Durability and size limits of realtime changes."""

    fsync: bool = MISSING
    compact_after_records: int = MISSING  # 0: only on request
    max_terms_per_doc: int = MISSING
    max_batch_changes: int = MISSING
    mmap: bool = MISSING  # map snapshot files read-only (shared by processes) instead of reading them
    shared: bool = MISSING  # several processes write one state: the lock is taken per write
    lock_wait_s: float = MISSING  # shared: how long a write waits for the lock


@dataclass
class ServedLogConfig:
    """The log of served EBR results (ebr/ranking/served_log.py): on/off, sampling, segments, flushes."""

    enabled: bool = MISSING
    sample_rate: float = MISSING
    segment_records: int = MISSING
    flush_records: int = MISSING
    flush_s: float = MISSING
    queue_records: int = MISSING


@dataclass
class HttpConfig:
    """The HTTP API: binding, deadlines, admission, size limits and authentication."""

    host: str = MISSING
    port: int = MISSING
    request_timeout_s: float = MISSING
    reload_poll_s: float = MISSING
    max_vector_dims: int = MISSING
    max_body_bytes: int = MISSING
    max_document_bytes: int = MISSING
    max_concurrent_searches: int = MISSING
    max_concurrent_writes: int = MISSING
    allowed_hosts: list[str] = MISSING
    auth_search: bool = MISSING
    allow_unauthenticated_writes: bool = MISSING
    token_file: str | None = None  # else $EBR_API_TOKEN
    log_results: ServedLogConfig = MISSING
    workers: int = MISSING  # server processes (`ebr serve --workers`); > 1: engine.store.shared in each
    access_log: bool = MISSING  # one log line per request (uvicorn's access log)


@dataclass
class BM25Params:
    """BM25's term-frequency saturation `k1` and length normalisation `b`."""

    k1: float = MISSING
    b: float = MISSING


@dataclass
class PlannerCosts:
    """Unit costs of the nn plans, relative to faiss scanning one PQ code (benchmarks/engine_plans.py)."""

    scan_result: float = MISSING
    pass_fraction: float = MISSING
    selector_check: float = MISSING
    hash_per_allowed: float = MISSING
    bitmap_per_id: float = MISSING
    candidate_per_allowed: float = MISSING
    candidate_per_hit: float = MISSING
    filter_cache_bytes: int = MISSING  # memory of the cached filter sets and their selectors (0: none)


@dataclass
class StagesConfig:
    """Which of a version's stages run at serving (ebr/retrieval/stages.py); a request may override."""

    query_policy: bool = MISSING
    relevance_filter: bool = MISSING
    ranker: bool = MISSING


@dataclass
class EngineConfig:
    """The engine's settings (ebr/retrieval/config.py checks the values)."""

    limits: Limits = MISSING
    results: ResultsConfig = MISSING
    store: StoreConfig = MISSING
    serving: HttpConfig = MISSING
    bm25: BM25Params = MISSING
    default_vertical: str | None = None
    templates: dict[str, str] = field(default_factory=dict)
    planner: PlannerCosts = MISSING
    stages: StagesConfig = MISSING

    @property
    def default_limit(self) -> int:
        return self.results.default_limit

    @property
    def max_limit(self) -> int:
        return self.results.max_limit

    @property
    def order(self) -> str:
        return self.results.order

    @property
    def max_batch_changes(self) -> int:
        return self.store.max_batch_changes


# ----- the retrain (conf/retrain.yaml and its groups)


@dataclass
class SplitConfig:
    tune: float = MISSING
    evaluate: float = MISSING
    max_heldout_fraction: float = MISSING


@dataclass
class DataConfig:
    scale: str = MISSING
    world_seed: int = MISSING
    logs_dir: str | None = None
    dataset: str | None = None  # resolved by `dataset_name` (conf/data/default.yaml)
    verticals: list[str] | None = None
    split: SplitConfig = MISSING


@dataclass
class TextFeatures:
    trigram_buckets: int = MISSING
    word_buckets: int = MISSING
    hash_seed: int = MISSING
    weighting: str = MISSING
    max_chars: int = MISSING


@dataclass
class FieldRoles:
    """A vertical's document columns by role (a role not listed: none)."""

    text: list[str] = field(default_factory=list)
    location: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)


@dataclass
class VocabConfig:
    min_count: int = MISSING


@dataclass
class SocialConfig:
    dim: int = MISSING
    weights: list[float] = MISSING
    normalization_strength: float = MISSING
    clusters: int = MISSING
    self_weight: float = MISSING
    seed: int = MISSING


@dataclass
class UnifiedFields:
    query: list[str] = MISSING
    document: list[str] = MISSING


@dataclass
class PretrainedConfig:
    model: str = MISSING
    sha256: str = MISSING
    max_seq_length: int = MISSING
    batch_size: int = MISSING


@dataclass
class FeaturesConfig:
    text: TextFeatures = MISSING
    fields: dict[str, Any] = MISSING  # vertical (or default) -> FieldRoles (checked by the features)
    vocab: VocabConfig = MISSING
    social: SocialConfig = MISSING
    unified: UnifiedFields = MISSING
    pretrained: PretrainedConfig = MISSING


@dataclass
class GroupConfig:
    fields: list[str] = MISSING
    dim: int = MISSING


@dataclass
class ModelConfig:
    margin: float = MISSING
    hard_negatives: int = MISSING
    embedding_dim: int = MISSING
    hidden_dims: list[int] = MISSING
    output_dim: int = MISSING
    groups: dict[str, GroupConfig] = MISSING
    share: bool = MISSING


@dataclass
class HardMining:
    window: list[int] = MISSING
    per_positive: int | None = None
    strategy: str = MISSING
    shard: float | None = None
    index: str = MISSING
    nlist: int = MISSING
    nprobe: int = MISSING


@dataclass
class MiningContracts:
    min_positives: int = MISSING


@dataclass
class MiningConfig:
    positives: str = MISSING
    negatives: str = MISSING
    random_per_positive: int = MISSING
    easy_hard_ratio: float = MISSING
    rounds: int = MISSING
    transfer: str = MISSING
    model: str | None = None
    start_from: str | None = None
    hard: HardMining = MISSING
    exclude_same_query_clicks: bool = MISSING
    hard_positive_window_minutes: float = MISSING
    block_size: int = MISSING
    seed: int = MISSING
    contracts: MiningContracts = MISSING


@dataclass
class TrainerConfig:
    """Lightning's Trainer arguments (hydra.utils.instantiate); others may be added with +train.trainer.X."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = MISSING
    devices: Any = MISSING  # an int, a list of devices or "auto" (Lightning's)
    strategy: str = MISSING
    num_nodes: int = MISSING
    precision: str = MISSING
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING
    log_every_n_steps: int = MISSING


@dataclass
class TrainConfig:
    models: list[str] = MISSING
    variants: dict[str, Any] = MISSING  # name -> a variant, checked by ebr.models.training.variant
    positives: str = MISSING
    random_negatives: int = MISSING
    mined_negatives: int = MISSING
    epochs: int = MISSING
    min_steps: int = MISSING
    steps: int | None = None
    batch_size: int = MISSING
    validation_pairs: int = MISSING
    lr: float = MISSING
    embedding_gradients: str = MISSING
    encoder_lr: float = MISSING
    head_lr: float = MISSING
    trainer: TrainerConfig = MISSING
    logger: str = MISSING
    torch_threads: int | None = None


@dataclass
class EvalBM25:
    k1: float = MISSING
    b: float = MISSING


@dataclass
class EvalConfig:
    ks: list[int] = MISSING
    baselines: list[str] = MISSING
    query_block: int = MISSING
    intents_path: str | None = None
    bm25: EvalBM25 = MISSING


@dataclass
class WeightedConcat:
    name: str = MISSING
    keys: list[str] = MISSING
    weights: list[float] | None = None


@dataclass
class CascadeConfig:
    name: str = MISSING
    first: str = MISSING
    second: str = MISSING
    n: int = MISSING


@dataclass
class EnsembleConfig:
    models: list[str] | None = None
    weighted_concat: list[WeightedConcat] = MISSING
    weight_grid: list[float] = MISSING
    validation_k: int = MISSING
    cascades: list[CascadeConfig] = MISSING


@dataclass
class IndexConfig:
    """The ANN sweep and its target (ebr/ann/quantize.py)."""

    factories: list[str] = MISSING
    nlists: list[Any] = MISSING  # ints, or "auto" (the power of two nearest 4 sqrt(n))
    imi_bits: list[int] = MISSING
    nprobes: list[int] = MISSING
    pq_bytes: int | None = None  # None: d/4
    pq_nbits: int = MISSING
    pca_dim: int | None = None  # None: d/2
    metric: str = MISSING
    k: int = MISSING
    one_recall_r: int = MISSING
    target_metric: str = MISSING
    max_drop: float = MISSING
    relative: bool = MISSING
    train_size: int = MISSING
    tuning_queries: int = MISSING
    seed: int = MISSING
    threads: int | None = None
    share_coarse: bool = MISSING  # one coarse quantiser per nlist, shared by the schemes in its space
    opq_iterations: int | None = None  # OPQ rotation/PQ alternations; None: faiss's default (50)
    early_stop: bool = MISSING  # stop a scheme's nprobe sweep once its points can no longer be chosen
    past_target: int = MISSING  # nprobes still measured after that (the front's report)
    plateau: float | None = None  # ... or once the accuracy rises by at most this (None: never)
    scan_cost: dict[str, float] = MISSING  # relative cost per scanned code, per faiss IVF class


@dataclass
class IndexSelectionConfig:
    """Which documents enter the (nn) fields (ebr/selection/documents.py): per vertical a read-only SQL query
    over the dataset's DuckDB tables returning a doc_id column; a vertical not listed (or null): every one."""

    verticals: dict[str, str | None] = MISSING


@dataclass
class RepeatClickRule:
    enabled: bool = MISSING


@dataclass
class LengthRule:
    """A query matches when it has at least `min_tokens` tokens and at most `max_chars` characters (None: no
    bound); `matched` (skip | keep) is what the nn part of a matching query gets, the others get the other."""

    enabled: bool = MISSING
    min_tokens: int | None = None
    max_chars: int | None = None
    matched: str = MISSING


@dataclass
class QueryClassifierRule:
    enabled: bool = MISSING
    threshold: float = MISSING  # skip the nn part when P(nn finds a click term matching misses) < threshold
    c: float = MISSING  # inverse L2 regularisation of the logistic regression
    holdout: float = MISSING  # share of the training requests held out for the reported AUC / accuracy
    max_requests: int = MISSING  # training requests replayed at most (a seeded sample)


@dataclass
class QuerySelectionConfig:
    """The query selection policy (ebr/selection/queries.py): its rules, combined (skip if any says skip)."""

    k: int = MISSING  # results per request a click must be in to count as found (the classifier's labels)
    repeat_click: RepeatClickRule = MISSING
    length: LengthRule = MISSING
    classifier: QueryClassifierRule = MISSING


@dataclass
class CalibrationConfig:
    """What each vertical serves and how its template is calibrated (ebr/retrieval/calibration.py)."""

    serve: str = MISSING
    target: float = MISSING
    max_scanned: float = MISSING
    nprobes: list[int] = MISSING
    fusions: list[str] = MISSING
    metric: str = MISSING
    radius_slack: float = MISSING
    max_sessions: int = MISSING
    seed: int = MISSING


@dataclass
class GateVertical:
    k: int | None = None  # None: gate.k
    floor: float | None = None  # None: gate.floor


@dataclass
class Margin:
    margin: float = MISSING


@dataclass
class GateBaselines:
    bm25: Margin | None = None  # None: the rule is off
    text: Margin | None = None


@dataclass
class GcConfig:
    """The retention policy of `ebr gc` (conf/gc/default.yaml; ebr/registry/gc.py applies it)."""

    keep_versions: int = MISSING
    keep_runs: int = MISSING
    keep_checkpoints: int = MISSING


@dataclass
class GateNdcg:
    """The gate's NDCG@k of the final list (after the ranker) and its rule against the published version."""

    k: int = MISSING
    tolerance: float | None = MISSING  # null: reported, not checked


@dataclass
class GateSchema:
    sessions: str = MISSING
    k: int = MISSING
    floor: float = MISSING
    tolerance: float = MISSING
    baselines: GateBaselines = MISSING
    ndcg: GateNdcg = MISSING
    verticals: dict[str, Any] = field(default_factory=dict)  # name -> GateVertical (checked by the gate)


@dataclass
class TextLimits:
    title: int | None = None
    query: int | None = None
    name: int | None = None


@dataclass
class DocumentColumns:
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class IngestSchema:
    max_bad_fraction: float = MISSING
    validation_batch_rows: int = MISSING
    outside_links: bool = MISSING
    sample_failures: int = MISSING
    text_max_chars: TextLimits = MISSING
    verticals: list[str] | None = None
    documents: DocumentColumns = MISSING


@dataclass
class RunnerConfig:
    kind: str = MISSING
    workers: int | None = None
    shard_rows: int = MISSING
    address: str | None = None  # dask: a running scheduler
    cluster: dict[str, Any] | None = None  # dask: LocalCluster arguments


@dataclass
class RaterSimulation:
    """RATER SIMULATION (ebr/ranking/raters.py): raters of a simulated world judge by its hidden intents."""

    error_rate: float = MISSING
    seed: int = MISSING


@dataclass
class RelevanceFilterConfig:
    """The relevance filter of EBR results (ebr/ranking/relevance.py): features, threshold, LightGBM."""

    variant: str = MISSING
    target_recall: float = MISSING
    holdout_share: float = MISSING
    min_labels: int = MISSING
    candidates: int = MISSING
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeedbackConfig:
    """The rater feedback loop (docs/feedback.md): rating budget and sample, raters, the filter."""

    budget: int = MISSING
    seed: int = MISSING
    relevant_label: float = MISSING
    replay_part: str = MISSING
    raters: RaterSimulation = MISSING
    filter: RelevanceFilterConfig = MISSING


@dataclass
class RankingConfig:
    """The ranking stage (ebr/ranking/ranker.py, docs/ranking.md): LightGBM lambdarank over the candidates."""

    enabled: bool = MISSING
    variant: str = MISSING  # the embedding feature shipped: none | cosine | hadamard | raw
    compare: list[str] = MISSING  # the variants trained and reported side by side (the artifact)
    candidates: int = MISSING  # hits retrieved per request for the ranker
    train_part: str = MISSING
    report_part: str = MISSING
    max_requests: int = MISSING
    valid_share: float = MISSING
    batch_size: int = MISSING
    rounds: int = MISSING
    early_stopping: int = MISSING
    num_threads: int = MISSING
    seed: int = MISSING
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrainConfig:
    data: DataConfig = MISSING
    features: FeaturesConfig = MISSING
    model: ModelConfig = MISSING
    mining: MiningConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    ensemble: EnsembleConfig = MISSING
    index: IndexConfig = MISSING
    index_selection: IndexSelectionConfig = MISSING
    query_selection: QuerySelectionConfig = MISSING
    serving: CalibrationConfig = MISSING
    gate: GateSchema = MISSING
    ingest: IngestSchema = MISSING
    runner: RunnerConfig = MISSING
    feedback: FeedbackConfig = MISSING
    ranking: RankingConfig = MISSING
    seed: int = MISSING
    optimized_metric: str | None = None
    publish: bool | None = None


SCHEMAS = {
    "data": DataConfig,
    "features": FeaturesConfig,
    "model": ModelConfig,
    "mining": MiningConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "ensemble": EnsembleConfig,
    "index": IndexConfig,
    "index_selection": IndexSelectionConfig,
    "query_selection": QuerySelectionConfig,
    "serving": CalibrationConfig,
    "gate": GateSchema,
    "ingest": IngestSchema,
    "runner": RunnerConfig,
    "feedback": FeedbackConfig,
    "ranking": RankingConfig,
}


def dataset_name(scale: str, world_seed: int, logs_dir: str | None) -> str:
    """The default `data.dataset` (the resolver `ebr_dataset` of conf/data/default.yaml): the folder name of
    data.logs_dir, else the simulated world's `sim-<scale>-s<seed>`."""
    return folder_dataset(logs_dir) if logs_dir else sim_dataset(scale, world_seed)


def _register() -> None:
    OmegaConf.register_new_resolver("ebr_dataset", dataset_name, replace=True)
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)
    store.store(group="engine", name="schema", node=EngineConfig)
    store.store(group="gc", name="schema", node=GcConfig)
    store.store(name="retrain_schema", node=RetrainConfig)


_register()


def load_config(overrides: Sequence[str] = (), config_name: str = "retrain") -> DictConfig:
    """The resolved config `conf/<config_name>.yaml` with Hydra overrides applied (no sweep syntax)."""
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main (e.g. a sweep job): compose in place
        cfg = compose(config_name=config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


INPUT_PATHS = {"data.logs_dir": "a folder", "eval.intents_path": "a file"}  # given inputs a run reads


def check_inputs(cfg: DictConfig) -> None:
    """Refuse, before anything runs, a composed config whose given input paths (INPUT_PATHS) do not exist."""
    for key, kind in INPUT_PATHS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        path = Path(str(value)).expanduser()
        if not (path.is_dir() if kind == "a folder" else path.is_file()):
            raise ValueError(f"{key}={value}: not {kind}")


def first_sweep_job(overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep's first job (`a=1,2` -> `a=1`, `range(1,3)` -> 1), to validate a sweep before
    it starts; interval sweeps (an Optuna search's) are left to the sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if not o.is_sweep_override():
            job.append(o.input_line)
        elif not o.is_interval_sweep():
            job.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
    return job


def config_error(error: BaseException) -> str:
    """A composition error as one line: Hydra's message, the options of a missing group choice, and the
    first line of its cause (e.g. `Key 'margn' not in 'ModelConfig'`); without Hydra's search path."""
    text = str(error).split("Config search path:")[0]
    head, found, options = text.partition("Available options in ")
    lines = [s.strip() for s in head.splitlines() if s.strip() and not s.startswith("See https://hydra.cc")]
    message = " ".join(lines)
    if found:
        group, _, names = options.partition(":")
        message += f" (available in {group}: {', '.join(names.split())})"
    cause = error.__cause__ or error.__context__
    detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if detail and detail not in message:
        message += f" ({detail})"
    return message


def config_from_container(config: Mapping[str, Any]) -> DictConfig:
    """A resolved retrain config given as plain data (e.g. a flow parameter) back under its schema."""
    return OmegaConf.merge(OmegaConf.structured(RetrainConfig), config)


def typed(node: DictConfig) -> Any:
    """The dataclass object of a composed config node (its schema's class)."""
    return OmegaConf.to_object(node)


@lru_cache(maxsize=1)
def engine_defaults() -> EngineConfig:
    """conf/engine/default.yaml as it stands (the values functions use when their caller passes none)."""
    return typed(load_config(config_name="engine/default").engine)


@lru_cache(maxsize=1)
def retrain_defaults() -> RetrainConfig:
    """conf/retrain.yaml as it stands."""
    return typed(load_config())
