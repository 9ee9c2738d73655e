"""The one validated, versioned, JSON-serialisable description of a LoRA/QLoRA SFT job."""
from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_VERSION = 1

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    # Ours, for the learning-rate range test: from start_lr up to learning_rate, multiplying by the same factor every
    # step (the seed's "LR increases smoothly from very small to large"); no warmup.
    "exponential_range",
)
EXPONENTIAL_RANGE_START = 1e-7

# The keyword arguments transformers' get_scheduler passes on for each type (transformers 5.17).
SCHEDULER_KWARGS: dict[str, frozenset[str]] = {
    "linear": frozenset(),
    "cosine": frozenset({"num_cycles"}),
    "cosine_with_restarts": frozenset({"num_cycles"}),
    "polynomial": frozenset({"lr_end", "power"}),
    "constant": frozenset(),
    "constant_with_warmup": frozenset(),
    "inverse_sqrt": frozenset({"timescale"}),
    "reduce_lr_on_plateau": frozenset(
        {"mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps"}
    ),
    "cosine_with_min_lr": frozenset({"num_cycles", "min_lr", "min_lr_rate"}),
    "warmup_stable_decay": frozenset(
        {"num_stable_steps", "num_decay_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"}
    ),
    "exponential_range": frozenset({"start_lr"}),
}

OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
BNB_OPTIMIZERS = frozenset({"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"})


# Bounds where a larger value would overflow rather than train: the dashboard keeps steps and step counts in 32-bit
# integer columns (PostgreSQL integer), and numpy's and torch's seeding take at most 2**32 - 1 (numpy refuses more).
STEPS_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
# Paths and names: what the dashboard's path columns hold.
PATH_MAX = 1000
PROMPT_MAX = 10_000


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why `value` cannot be a name, a path or (with `multiline`) a prompt; None when it can. A NUL byte is refused
    by the OS's paths and by PostgreSQL's text and JSON; other control characters (tabs and newlines too, outside a
    prompt) and unpaired surrogates (which no UTF-8 encoder writes) have no place in a name or a path either."""
    for ch in value:
        if ch == "\x00":
            return "contains a NUL byte (\\x00); allowed: printable text"
        category = unicodedata.category(ch)
        if category == "Cs":
            return f"contains an unpaired surrogate (U+{ord(ch):04X}); allowed: printable text"
        if category == "Cc" and not (multiline and ch in "\t\n\r"):
            allowed = "printable text, tabs and newlines" if multiline else "printable text on one line"
            return f"contains a control character (U+{ord(ch):04X}); allowed: {allowed}"
    return None


def _clean_line(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _clean_text(value: str) -> str:
    problem = text_problem(value, multiline=True)
    if problem:
        raise ValueError(problem)
    return value


# A name or a path: one line of printable text.
PathText = Annotated[str, Field(min_length=1, max_length=PATH_MAX), AfterValidator(_clean_line)]
Steps = Annotated[int, Field(ge=1, le=STEPS_MAX)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class ConfigError(ValueError):
    """A config that must not start: `errors` maps each field to what is wrong and what is allowed."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors.items()))


class LoftQ(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    loftq_bits: Literal[2, 4, 8] = 4
    loftq_iter: Annotated[int, Field(ge=1, le=20)] = 4


class TrainConfig(BaseModel):
    """Every field a run can set. Defaults are PEFT's and TRL's own, so a config means the same thing as in those
    libraries; the seed's "simple defaults" live in the guidance and in presets."""

    # No NaN or infinity in any float: none trains, and PostgreSQL's JSON cannot store them.
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)

    version: Literal[1] = CONFIG_VERSION

    # Model (FastLanguageModel.from_pretrained)
    model: PathText
    max_length: Annotated[int, Field(ge=16, le=262144)] = 2048
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    load_in_4bit: bool = False

    # LoRA (get_peft_model)
    r: Annotated[int, Field(ge=1, le=4096)] = 16
    # At most 16 x the largest r: alpha/r scales the adapters' output, and more than that only overflows it.
    lora_alpha: Annotated[float, Field(gt=0, le=65536)] = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    bias: Literal["none", "lora_only", "all"] = "none"
    use_rslora: bool = False
    loftq_config: LoftQ | None = None
    # A group resolved on the loaded model's own linear layers (training/engine/targets.py), or layer names
    target_modules: Union[Literal["attention", "mlp", "all-linear"], Annotated[list[Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_clean_line)]],
                                                                                   Field(max_length=256)]] = "all-linear"
    random_state: Seed = 3407
    # A saved LoRA adapter whose weights the adapters start from (same r, target modules and bias); Tuneboard sets
    # it when a run builds on an earlier run's adapter.
    init_adapter: PathText | None = None
    gradient_checkpointing: bool = True
    # Unsloth's tiled MLP (unsloth_zoo.tiled_mlp, unsloth backend only): each decoder MLP runs over the micro-batch's
    # tokens in shards and recomputes them in backward, so only one shard's intermediate activations are on the GPU.
    # No target: shards of hidden-size tokens; a target: as few shards as keep one MLP near that many GB.
    tiled_mlp: bool = False
    tiled_mlp_target_gb: Annotated[float, Field(gt=0, le=1024)] | None = None

    # Data
    train_file: PathText
    eval_file: PathText | None = None
    eval_split: Annotated[float, Field(gt=0, lt=1)] | None = None
    data_format: Literal["auto", "text", "prompt_completion", "messages"] = "auto"

    # SFT (SFTConfig)
    packing: bool = False
    eval_packing: bool = False
    per_device_train_batch_size: Annotated[int, Field(ge=1, le=4096)] = 2
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=65536)] = 4
    warmup_steps: Union[Annotated[int, Field(ge=0, le=STEPS_MAX)], Annotated[float, Field(ge=0, lt=1)]] = 0.03
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    optim: Literal[OPTIMIZERS] = "adamw_torch_fused"  # type: ignore[valid-type]
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.01
    lr_scheduler_type: Literal[SCHEDULERS] = "linear"  # type: ignore[valid-type]
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict)
    max_grad_norm: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    num_train_epochs: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    max_steps: Steps | None = None
    eval_steps: Steps | None = None
    logging_steps: Steps = 1
    save_steps: Steps | None = None
    # Stop once eval loss has not improved for this many evals, and keep the best checkpoint as the adapter.
    early_stopping_patience: Annotated[int, Field(ge=1, le=1000)] | None = None
    early_stopping_threshold: Annotated[float, Field(ge=0, le=100)] = 0.0
    seed: Seed = 3407
    completion_only_loss: bool | None = None

    # Where and how
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    # Data-parallel ranks: one process per GPU, each with the whole model and per_device_train_batch_size rows of
    # every micro-batch (on a CPU worker, CPU processes over gloo). Effective batch = micro-batch x accumulation x
    # devices.
    devices: Annotated[int, Field(ge=1, le=8)] = 1
    output_dir: PathText = "run"
    merge_16bit: bool = False
    sample_prompts: Annotated[list[Annotated[str, Field(max_length=PROMPT_MAX), AfterValidator(_clean_text)]],
                              Field(max_length=64)] = Field(default_factory=list)
    sample_max_new_tokens: Annotated[int, Field(ge=1, le=2048)] = 32

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _warmup_kind(cls, v: Any) -> Any:
        # 1.0 is not a ratio (a ratio is < 1) and not an int either: say so rather than silently meaning 1 step.
        if isinstance(v, float) and v >= 1:
            raise ValueError("a warmup ratio must be in [0, 1); give a whole number of steps as an integer")
        return v

    @field_validator("lr_scheduler_kwargs")
    @classmethod
    def _scheduler_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        # What transformers' schedulers take: numbers, and a word for a mode or a warmup/decay type. Anything else
        # would reach the library (or the database's JSON) and fail there, not here with the field named.
        for key, value in v.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                if isinstance(value, float) and not math.isfinite(value) or abs(value) > STEPS_MAX:
                    raise ValueError(f"{key} must be a finite number of magnitude at most {STEPS_MAX}")
                continue
            if isinstance(value, str) and len(value) <= 40 and not text_problem(value):
                continue
            raise ValueError(f"{key} must be a number or a word (at most 40 characters), not {value!r:.60}")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("name at least one module, or a group: attention, mlp, all-linear")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "TrainConfig":
        allowed = SCHEDULER_KWARGS[self.lr_scheduler_type]
        unknown = sorted(set(self.lr_scheduler_kwargs) - allowed)
        if unknown:
            allowed_text = ", ".join(sorted(allowed)) if allowed else "none"
            raise ValueError(
                f"lr_scheduler_kwargs: {', '.join(unknown)} not accepted by {self.lr_scheduler_type}; "
                f"allowed: {allowed_text}"
            )
        if self.lr_scheduler_type == "cosine_with_min_lr":
            given = {"min_lr", "min_lr_rate"} & set(self.lr_scheduler_kwargs)
            if len(given) != 1:
                raise ValueError("lr_scheduler_kwargs: cosine_with_min_lr needs exactly one of min_lr, min_lr_rate")
        if self.lr_scheduler_type == "warmup_stable_decay" and "num_decay_steps" not in self.lr_scheduler_kwargs:
            raise ValueError("lr_scheduler_kwargs: warmup_stable_decay needs num_decay_steps (e.g. 30-50% of the run)")
        if self.lr_scheduler_type == "exponential_range":
            start = self.lr_scheduler_kwargs.get("start_lr", EXPONENTIAL_RANGE_START)
            if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 < start < self.learning_rate:
                raise ValueError(f"lr_scheduler_kwargs: exponential_range's start_lr must be above 0 and below "
                                 f"learning_rate ({self.learning_rate:g}), where the ramp ends")
            if self.warmup_steps:
                raise ValueError("warmup_steps: exponential_range ramps from start_lr itself; set warmup_steps to 0")
        if self.lr_scheduler_type == "reduce_lr_on_plateau" and not self.has_eval:
            raise ValueError(
                "lr_scheduler_type: reduce_lr_on_plateau steps on eval loss; give eval_file or eval_split "
                "and eval_steps"
            )
        if self.eval_file and self.eval_split:
            raise ValueError("eval_split: give eval_file or eval_split, not both")
        self._check_early_stopping()
        if self.tiled_mlp_target_gb is not None and not self.tiled_mlp:
            raise ValueError("tiled_mlp_target_gb: sizes the tiled MLP's shards; set tiled_mlp to true, or leave "
                             "it empty")
        if self.tiled_mlp and self.backend == "hf":
            raise ValueError("tiled_mlp: Unsloth's tiled MLP exists on the unsloth backend only; with backend hf "
                             "allowed: false (or choose backend unsloth or auto)")
        if self.init_adapter is not None and self.loftq_config is not None:
            raise ValueError("loftq_config: the adapters start from init_adapter's trained weights, which would "
                             "replace LoftQ's initialisation; leave loftq_config empty")
        if self.loftq_config is not None and self.load_in_4bit:
            raise ValueError(
                "loftq_config: LoftQ initialises LoRA from the full-precision weights; "
                "it cannot start from a 4-bit load (set load_in_4bit to false)"
            )
        return self

    def _check_early_stopping(self) -> None:
        """Early stopping watches eval loss and restores the best checkpoint at the end (transformers'
        load_best_model_at_end): it needs evals, and any checkpoint cadence must fall on eval steps."""
        if self.early_stopping_patience is None:
            if self.early_stopping_threshold:
                raise ValueError("early_stopping_threshold: only counts with early stopping; set "
                                 "early_stopping_patience too, or leave the threshold at 0")
            return
        if not self.has_eval:
            raise ValueError("early_stopping_patience: stops when eval loss stops improving, so the run needs evals; "
                             "give eval_file or eval_split and eval_steps")
        if self.save_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps: with early stopping the best eval's checkpoint becomes the adapter, so checkpoints "
                f"must fall on eval steps: make save_steps a multiple of eval_steps ({self.eval_steps}), e.g. "
                f"{self.eval_steps * max(1, round(self.save_steps / self.eval_steps))}, or leave it empty to save "
                "at each new best eval")

    @property
    def has_eval(self) -> bool:
        return bool((self.eval_file or self.eval_split) and self.eval_steps)


def _field_of(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("int", "float", "constrained", "literal", "list["))]
    if loc:
        return ".".join(loc)
    # A model-level error names its field at the start of its message ("field: ...").
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg.split(":", 1)[0] if ":" in msg else "config"


# A bound pydantic names in its own words ("Input should be less than or equal to 1"), said as the value against it.
_BOUNDS = {"less_than_equal": ("le", "is above {bound}: at most {bound}"),
           "less_than": ("lt", "is not below {bound}: must be less than {bound}"),
           "greater_than": ("gt", "is not above {bound}: must be greater than {bound}"),
           "greater_than_equal": ("ge", "is below {bound}: at least {bound}")}


def _bound_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _message_of(error: dict[str, Any]) -> str:
    if error["type"] in _BOUNDS and "input" in error:
        key, text = _BOUNDS[error["type"]]
        bound = (error.get("ctx") or {}).get(key)
        if bound is not None:
            return f"{_bound_text(error['input'])} {text.format(bound=_bound_text(bound))}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if not [p for p in error["loc"]] and ":" in msg:
        msg = msg.split(":", 1)[1].strip()
    if error["type"] == "extra_forbidden":
        return f"unknown field; allowed fields: {', '.join(TrainConfig.model_fields)}"
    return msg


def parse_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict; raise ConfigError naming every bad field and what is allowed."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            errors.setdefault(_field_of(err), _message_of(err))
        raise ConfigError(errors) from None


def check_environment(config: TrainConfig, *, cuda: bool | None = None, bf16: bool | None = None,
                      gpus: int | None = None) -> None:
    """Checks that need the machine, not just the config: run before any model loads."""
    if cuda is None or bf16 is None:
        import torch

        cuda = torch.cuda.is_available() if cuda is None else cuda
        bf16 = (cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16
    if gpus is None and cuda and config.devices > 1:
        import torch

        gpus = torch.cuda.device_count()
    errors: dict[str, str] = {}
    has = importlib.util.find_spec
    if config.loftq_config is not None:
        if not cuda:
            errors["loftq_config"] = "LoftQ initialisation runs on a GPU only; this machine has no CUDA device"
        elif has("scipy") is None:
            errors["loftq_config"] = "LoftQ needs scipy; install it on the worker"
    if config.optim in BNB_OPTIMIZERS:
        if has("bitsandbytes") is None:
            errors["optim"] = f"{config.optim} needs bitsandbytes; allowed without it: adamw_torch_fused, adamw_torch"
        elif not cuda:
            errors["optim"] = f"{config.optim} needs a CUDA GPU; allowed on CPU: adamw_torch_fused, adamw_torch"
    if config.load_in_4bit and not cuda:
        errors["load_in_4bit"] = "4-bit loading (bitsandbytes) needs a CUDA GPU; set it to false on CPU"
    if config.load_in_4bit and has("bitsandbytes") is None:
        errors["load_in_4bit"] = "4-bit loading needs bitsandbytes; install it on the worker"
    if config.dtype == "bfloat16" and not bf16:
        errors["dtype"] = "this hardware has no bfloat16 support; allowed: auto, float16, float32"
    if config.dtype == "float16" and not cuda:
        errors["dtype"] = "float16 training needs a GPU; allowed on CPU: auto, float32"
    if config.backend == "unsloth" and has("unsloth") is None:
        errors["backend"] = "unsloth is not installed on this worker; allowed: hf, auto"
    if config.devices > 1 and cuda and config.devices > gpus:
        errors["devices"] = f"asks for {config.devices} GPUs, one per rank; this worker has {gpus}; allowed here: " \
                            f"1 to {gpus}"
    if errors:
        raise ConfigError(errors)


def load_config_file(path: str | Path) -> TrainConfig:
    return parse_config(json.loads(Path(path).read_text()))
