"""One settings object, read from the environment (and `.env`) once, handed to code that needs it.

Nothing here runs at import time: call `Settings()` (or `load_settings()`) where the process starts.
A setting with an invalid value stops the process with a message naming it (see `load_settings`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://localhost:6379/0", validation_alias=_env("REDIS_URL"))
    redis_prefix: str = Field(
        "sdxl", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", validation_alias=_env("SDXL_REDIS_PREFIX")
    )
    # Redis socket timeouts: short, so that an outage is a quick 502 and never a hang.
    redis_socket_timeout_s: float = Field(1.5, gt=0, validation_alias=_env("SDXL_REDIS_SOCKET_TIMEOUT_S"))
    models_file: str = Field("models.yaml", validation_alias=_env("SDXL_MODELS_FILE"))
    public_url: str | None = Field(None, validation_alias=_env("SDXL_PUBLIC_URL"))
    auth: Literal["enabled", "disabled"] = Field("enabled", validation_alias=_env("SDXL_AUTH"))
    api_keys: str = Field("", validation_alias=_env("SDXL_API_KEYS"))
    default_base_model: str = Field("juggernaut", validation_alias=_env("SDXL_DEFAULT_BASE_MODEL"))
    result_ttl_s: int = Field(3600, ge=1, validation_alias=_env("SDXL_RESULT_TTL_S"))
    sync_timeout_s: float = Field(300, gt=0, validation_alias=_env("SDXL_SYNC_TIMEOUT_S"))
    max_queue: int = Field(1000, ge=1, validation_alias=_env("SDXL_MAX_QUEUE"))
    # A request still QUEUED this long after its submission ends FAILED "expired in queue", refunded.
    max_queue_time_s: float = Field(3600, gt=0, validation_alias=_env("SDXL_MAX_QUEUE_TIME_S"))
    max_image_bytes: int = Field(20_000_000, ge=1, validation_alias=_env("SDXL_MAX_IMAGE_BYTES"))
    max_input_pixels: int = Field(40_000_000, ge=64 * 64, validation_alias=_env("SDXL_MAX_INPUT_PIXELS"))
    # Memory the API's input-image decodes may hold at once (estimated from each header); see
    # app/core/decode_budget.py. The default fits two decodes of a SDXL_MAX_INPUT_PIXELS image.
    decode_memory_mb: int = Field(1024, ge=16, validation_alias=_env("SDXL_DECODE_MEMORY_MB"))
    # How long a decode waits for room in that budget before its request is a 503 with Retry-After.
    decode_wait_s: float = Field(5.0, ge=0, validation_alias=_env("SDXL_DECODE_WAIT_S"))
    # Live status streams and long polls open at once per API process (each holds a Redis
    # connection while it waits); see app/api/open_waits.py.
    max_open_waits: int = Field(1024, ge=1, validation_alias=_env("SDXL_MAX_OPEN_WAITS"))
    max_pixels: int = Field(1_572_864, ge=64 * 64, validation_alias=_env("SDXL_MAX_PIXELS"))
    max_body_bytes: int = Field(30_000_000, ge=1024, validation_alias=_env("SDXL_MAX_BODY_BYTES"))
    allow_private_urls: bool = Field(False, validation_alias=_env("SDXL_ALLOW_PRIVATE_URLS"))
    fetch_connect_timeout_s: float = Field(10, gt=0, validation_alias=_env("SDXL_FETCH_CONNECT_TIMEOUT_S"))
    fetch_total_timeout_s: float = Field(30, gt=0, validation_alias=_env("SDXL_FETCH_TOTAL_TIMEOUT_S"))
    credits_per_image: int = Field(1, ge=0, validation_alias=_env("SDXL_CREDITS_PER_IMAGE"))
    job_lost_s: float = Field(120, gt=0, validation_alias=_env("SDXL_JOB_LOST_S"))
    webhook_secret: str | None = Field(None, validation_alias=_env("SDXL_WEBHOOK_SECRET"))
    # First webhook retry delay; each next one doubles (1, 2, 4, 8, 16 s by default).
    webhook_backoff_s: float = Field(1.0, gt=0, validation_alias=_env("SDXL_WEBHOOK_BACKOFF_S"))
    # Webhook POSTs in flight at once per API process, and of those at most `per_host` to one
    # `hostname:port`: one receiver that hangs holds at most that many (app/core/webhook_hosts.py).
    webhook_concurrency: int = Field(16, ge=1, validation_alias=_env("SDXL_WEBHOOK_CONCURRENCY"))
    webhook_per_host: int = Field(4, ge=1, validation_alias=_env("SDXL_WEBHOOK_PER_HOST"))
    # Wall-clock bound on one webhook attempt (resolve, connect, send, answer's headers): a receiver
    # that trickles bytes cannot stretch it.
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias=_env("SDXL_WEBHOOK_TIMEOUT_S"))
    worker_models: str = Field("", validation_alias=_env("SDXL_WORKER_MODELS"))
    # The fast path (CONTRACT 11). None / "auto": the device decides (worker/fast_path.py): on CUDA
    # batching, channels_last, fused QKV and torch.compile are on; on the CPU they are off.
    # Most requests one worker runs together in one pipeline call (1: one at a time).
    max_batch: int | None = Field(None, ge=1, validation_alias=_env("SDXL_MAX_BATCH"))
    # How long a worker that starts a request waits to gather compatible queued ones to run with it.
    batch_window_ms: float | None = Field(
        None, ge=0, le=10_000, validation_alias=_env("SDXL_BATCH_WINDOW_MS")
    )
    # Most images one pipeline call makes (a request brings up to 4).
    max_batch_images: int = Field(8, ge=1, validation_alias=_env("SDXL_MAX_BATCH_IMAGES"))
    # CLIP tokens (start and end tokens included) the prompt and the negative prompt may each have,
    # counted by the workers with the model's own tokenizer (CONTRACT 3b): at least one window.
    max_prompt_tokens: int = Field(1000, ge=77, validation_alias=_env("SDXL_MAX_PROMPT_TOKENS"))
    compile: Literal["auto", "off", "default", "max-autotune"] = Field(
        "auto", validation_alias=_env("SDXL_COMPILE")
    )
    # Working sizes (WIDTHxHEIGHT, comma-separated) compiled and warmed up before a worker takes jobs.
    warmup_sizes: str = Field(
        "1024x1024",
        pattern=r"^\s*(\d+x\d+\s*(,\s*\d+x\d+\s*)*)?$",
        validation_alias=_env("SDXL_WARMUP_SIZES"),
    )
    # Compiled kernels kept between restarts; default <SDXL_CACHE_DIR>/compile.
    compile_cache_dir: str | None = Field(None, validation_alias=_env("SDXL_COMPILE_CACHE_DIR"))
    channels_last: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("SDXL_CHANNELS_LAST"))
    fuse_qkv: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("SDXL_FUSE_QKV"))
    device: Literal["auto", "cuda", "cpu"] = Field("auto", validation_alias=_env("SDXL_DEVICE"))
    max_resident_models: int = Field(2, ge=1, validation_alias=_env("SDXL_MAX_RESIDENT_MODELS"))
    cache_dir: str = Field("~/.cache/sdxl-img2img", validation_alias=_env("SDXL_CACHE_DIR"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("SDXL_LOG_LEVEL")
    )
    # Content blocks (CONTRACT 3c), checked by the workers; a key made `--unmoderated` skips them.
    # A text file of terms (one a line, whole words, any case; `re:<pattern>`; `#` comments).
    blocked_terms_file: str | None = Field(None, validation_alias=_env("SDXL_BLOCKED_TERMS_FILE"))
    # "off", or an image-classification model (Hugging Face id or local directory) run on every output.
    safety_checker: str = Field("off", min_length=1, validation_alias=_env("SDXL_SAFETY_CHECKER"))
    safety_labels: str = Field("nsfw", min_length=1, validation_alias=_env("SDXL_SAFETY_LABELS"))
    safety_threshold: float = Field(0.5, ge=0, le=1, validation_alias=_env("SDXL_SAFETY_THRESHOLD"))

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def safety_label_list(self) -> list[str]:
        return [label.strip() for label in self.safety_labels.split(",") if label.strip()]

    @property
    def worker_model_list(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]

    @property
    def warmup_size_list(self) -> list[tuple[int, int]]:
        """SDXL_WARMUP_SIZES as (width, height) pairs."""
        pairs = [item.strip().split("x") for item in self.warmup_sizes.split(",") if item.strip()]
        return [(int(width), int(height)) for width, height in pairs]

    @property
    def heartbeat_ttl_s(self) -> float:
        """How long a worker's heartbeat lives: a dead worker is noticed well within job_lost_s."""
        return max(1.0, min(15.0, self.job_lost_s / 4))

    @property
    def pending_ttl_s(self) -> int:
        """TTL of a waiting request's keys (record, input, RQ job): its queue time limit, then as
        long as an ended request is kept (CONTRACT 6)."""
        return int(self.max_queue_time_s + self.result_ttl_s)

    @property
    def stranded_after_s(self) -> float:
        """A QUEUED request found in no queue this long after it was last seen waiting goes back to
        its queue (its worker died between popping it and starting it)."""
        return 2 * self.heartbeat_ttl_s


class SettingsError(SystemExit):
    """Raised at start when a setting is invalid; the message names the variable."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into a one-line message naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
            name = alias.choices[0] if isinstance(alias, AliasChoices) else field
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
