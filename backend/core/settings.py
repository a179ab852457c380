"""All settings, read once from the environment. The README lists each with its default."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from backend.core.errors import InputError, SettingsError

OFFICIAL_CHECKPOINTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_t": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
}
HUB_CHECKPOINTS = {  # engines loaded with transformers' from_pretrained: their default hub ids
    "sam2": "facebook/sam2.1-hiera-tiny",
    "sam_hq": "syscv-community/sam-hq-vit-base",
    "sam3": "facebook/sam3",  # Meta's SAM License, gated: never the default engine
}


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Backend settings. Each field is read from the environment variable of the same name, upper-cased."""

    sam_engine: str = "vit_t"  # vit_t (MobileSAM), vit_b, vit_l, vit_h, sam2, sam_hq, sam3, grabcut (no weights)
    sam_checkpoint: str = ""  # default: MODEL_DIR/checkpoints/<official file name>; sam2/sam_hq/sam3: hub id or folder
    sam_checkpoint_url: str = ""  # default: the official download URL of the engine
    sam_download: bool = True  # fetch a missing checkpoint from SAM_CHECKPOINT_URL where the network allows
    sam_arch_overrides: str = ""  # JSON of architecture sizes, for custom-size checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model_retry_seconds: float = 30.0  # a failed model load is not tried again for this long (the error stays)
    model_load_wait: float = 30.0  # seconds a request waits for a model load; the load goes on in the background
    preload_model: bool = True  # served processes load (or download) the SAM model at start, in the background
    model_dir: str = "data/models"  # checkpoints and fine-tuned versions
    redis_url: str = ""  # shared embedding cache and job queue; empty: in-process
    redis_timeout: float = 0.5  # seconds for one Redis call of the embedding cache; a stalled Redis is then skipped
    embedding_cache_mb: int = 1024  # in-process LRU bound, in MiB (without Redis)
    embedding_cache_local_mb: int = 128  # with Redis: each worker's own front LRU, in MiB
    embedding_cache_ttl: int = 7 * 24 * 3600  # seconds an embedding lives in Redis
    embedding_disk_mb: int = 4096  # without Redis: embeddings also kept on disk (shared by workers, kept on restart)
    embedding_disk_dir: str = ""  # default: MODEL_DIR/embeddings
    embedding_float16: bool = True  # keep SAM embeddings as float16: half the cache memory and Redis traffic
    encoder_runtime: str = "auto"  # image encoders: auto (fastest usable here) | openvino | onnx | torch
    label_studio_url: str = ""  # for uploaded / local-storage / cloud images
    label_studio_api_key: str = ""
    image_cache_dir: str = "data/images"  # downloaded task images
    image_cache_mb: int = 2048  # the download cache's bound; least recently used images go first
    image_url_hosts: str = ""  # hosts images may be fetched from besides LABEL_STUDIO_URL's: name, name:port, *.domain
    max_download_mb: int = 64  # larger downloads are refused
    max_redirects: int = 3  # per download; each hop is checked against the policy again
    local_files_document_root: str = ""  # plain local paths in task data are read only below this folder
    max_image_pixels: int = 200_000_000  # larger images are refused
    max_image_memory_mb: int = 1024  # images whose decoding needs more memory are refused
    memory_budget_mb: int = 3072  # per worker: decoding and phrase work of concurrent requests together; then 503
    download_timeout: float = 30.0  # seconds for one image download, all redirects and the whole body
    max_request_mb: int = 32  # larger request bodies answer 413
    max_prompt_points: int = 64  # clicks in one interactive request
    max_prompt_phrases: int = 64  # text prompts per pre-labeled image: labels, aliases and the caption's phrases
    max_annotation_kb: int = 4096  # a larger annotation is not kept for training
    max_project_annotations: int = 20000  # annotations kept for training per project
    polygon_epsilon: float = 1.5  # contour simplification tolerance, in pixels
    predict_budget: float = 60.0  # seconds a batch /predict computes, the rest go on as jobs (< ML_TIMEOUT_PREDICT)
    prelabel_mode: str = "categories"  # batch predict without clicks: categories (detector) | everything | off
    prelabel_detector: str = "boxes"  # boxes: DETECTOR_MODEL boxes, SAM_ENGINE masks | sam3: SAM 3 concept masks
    sam3_checkpoint: str = ""  # SAM 3 for concepts when SAM_ENGINE is not sam3 (default facebook/sam3)
    detector_model: str = "omlab/omdet-turbo-swin-tiny-hf"  # or google/owlv2-base-patch16-ensemble, a folder, ...
    detector_threshold: float = 0.3  # detections below this score are dropped
    category_aliases: str = ""  # JSON {"Label": "prompt text" or ["text", ...]} when the label is not a good prompt
    prompt_field: str = "caption"  # task data field whose text adds prompts (comma separated)
    max_detections: int = 50  # per image
    everything_points_per_side: int = 16  # PRELABEL_MODE=everything point grid
    everything_iou_threshold: float = 0.88  # masks whose predicted IoU is lower are dropped (SAM's default)
    everything_stability_threshold: float = 0.95  # masks less stable under threshold shifts are dropped
    precompute_on_import: bool = False  # embed new tasks' images in the background (TASKS_CREATED webhook)
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"  # hub id or save_pretrained folder
    prompt_depth_model: str = "depth-anything/prompt-depth-anything-vits-hf"  # refines a low-res metric depth
    depth_prompt_field: str = "depth_prompt"  # task data field: URL of a sensor's low-res metric depth (.npy / PNG)
    depth_prompt_scale: float = 0.001  # metres per unit of a 16-bit PNG prompt depth (millimetres)
    output_dir: str = "data/outputs"  # generated files (depth maps, synthetic images)
    output_url: str = ""  # URL prefix OUTPUT_DIR is served under; empty: Label Studio local-files URLs
    output_s3_bucket: str = ""  # write generated files to this S3-compatible bucket instead of OUTPUT_DIR
    output_s3_prefix: str = "label-studio-backend"  # key prefix in the bucket
    output_s3_endpoint_url: str = ""  # e.g. http://minio:9000; empty: AWS
    synthesis_engine: str = "kandinsky"  # default engine of generation tasks: kandinsky | sd2
    kandinsky_prior_model: str = "kandinsky-community/kandinsky-2-2-prior"
    kandinsky_inpaint_model: str = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
    sd_inpaint_model: str = "sd2-community/stable-diffusion-2-inpainting"  # Stability AI removed its repo (2025-11)
    synthesis_steps: int = 30
    synthesis_guidance: float = 0.0  # 0: the engine's usual value (Kandinsky 4, SD 7.5)
    synthesis_size: int = 512  # working resolution of the crop around the region
    synthesis_seed: int = 0  # sample i uses seed + i
    synthesis_dilate: int = 8  # pixels the region grows so the object fits
    synthesis_feather: int = 6  # pixels of soft blending at the region's edge
    synthesis_max_samples: int = 8
    synthesis_remove_prompt: str = "background, empty scene, nothing"
    synthesis_target_project: int = 0  # 0: import into the source project
    generator_lora_rank: int = 4  # domain LoRA of the inpainting UNet (python -m backend train-generator)
    generator_train_steps: int = 200
    generator_learning_rate: float = 1e-4
    generator_train_size: int = 0  # training crops' side in pixels; 0: SYNTHESIS_SIZE
    generator_prompt_template: str = "{label}"  # the training prompt of a labeled region, e.g. "a photo of a {label}"
    train_every: int = 10  # start a fine-tuning job after every N new/updated annotations (0: only START_TRAINING)
    train_epochs: int = 20  # upper bound; early stopping usually ends sooner
    job_timeout: int = 6 * 3600  # seconds an RQ job may run (and a bulk pre-labeling waits for one)
    job_retries: int = 1  # an RQ job whose worker died is run again this many times
    max_queued_jobs: int = 1000  # jobs waiting at once (per in-process worker, or on RQ); more answer 503
    job_heartbeat_timeout: float = 120.0  # seconds without an RQ worker heartbeat after which its job is abandoned
    basic_auth_user: str = ""  # HTTP basic auth for every route but /health; set both or neither
    basic_auth_pass: str = ""
    allow_unauthenticated: bool = False  # serve on a non-loopback address without basic auth (not recommended)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            kind = type(f.default)
            try:
                if kind is bool:
                    values[f.name] = _env_bool(raw)
                elif kind in (int, float):
                    values[f.name] = kind(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise InputError(f"{f.name.upper()}={raw!r} is not a valid {kind.__name__}", "settings")
        if "local_files_document_root" not in values and env.get("LOCAL_FILES_DOCUMENT_ROOT"):
            values["local_files_document_root"] = env["LOCAL_FILES_DOCUMENT_ROOT"]
        return cls(**values)

    def problems(self) -> list[str]:
        """What makes these settings unsafe or unusable, one message per bad value (empty: fine)."""
        problems = []
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            problems.append("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together (only one is set, which would "
                            "leave the server open)")
        for name in ("download_timeout", "max_download_mb", "max_request_mb", "max_prompt_points",
                     "max_image_pixels", "max_image_memory_mb", "max_annotation_kb", "max_project_annotations",
                     "predict_budget", "max_prompt_phrases", "memory_budget_mb", "max_queued_jobs"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.upper()} must be positive, got {getattr(self, name)}")
        if self.memory_budget_mb < self.max_image_memory_mb:
            problems.append(f"MEMORY_BUDGET_MB={self.memory_budget_mb} must be at least MAX_IMAGE_MEMORY_MB="
                            f"{self.max_image_memory_mb} (else an allowed image could never be decoded)")
        for name in ("max_redirects", "image_cache_mb", "embedding_disk_mb", "train_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name.upper()} must not be negative, got {getattr(self, name)}")
        for name, allowed in (("prelabel_mode", ("categories", "everything", "off")),
                              ("prelabel_detector", ("boxes", "sam3")),
                              ("encoder_runtime", ("torch", "onnx", "openvino", "auto")),  # encoder_runtime.RUNTIMES
                              ("synthesis_engine", ("kandinsky", "sd2"))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name.upper()}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            problems.append(f"DEVICE={self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.label_studio_url and not re.match(r"^https?://[^/\s]+", self.label_studio_url):
            problems.append(f"LABEL_STUDIO_URL must start with http:// or https:// and a host, got "
                            f"{self.label_studio_url!r}")
        for pattern in filter(None, (p.strip() for p in self.image_url_hosts.split(","))):
            if not re.fullmatch(r"(\*|(\*\.)?[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?", pattern):
                problems.append(f"IMAGE_URL_HOSTS entry {pattern!r} is not host, host:port or *.domain")
        return problems

    def exposure_problem(self, hosts: list[str]) -> str | None:
        """Why serving on `hosts` (bind addresses) is refused: a non-loopback address without basic auth."""
        open_hosts = [h for h in hosts if not _is_loopback_host(h)]
        if not open_hosts or self.basic_auth_user or self.allow_unauthenticated:
            return None
        return (f"refusing to serve on {', '.join(open_hosts)} without authentication: set BASIC_AUTH_USER and "
                "BASIC_AUTH_PASS (and the same in Label Studio's model settings), bind to 127.0.0.1, or set "
                "ALLOW_UNAUTHENTICATED=true to accept the risk")

    def _json_object(self, name: str) -> dict:
        """The JSON object in setting `name` ({} when empty); InputError naming the variable otherwise."""
        raw = getattr(self, name)
        if not raw:
            return {}
        try:
            return dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name.upper()} is not a JSON object: {exc}", "settings")

    @property
    def arch_overrides(self) -> dict:
        return self._json_object("sam_arch_overrides")

    @property
    def aliases(self) -> dict:
        return self._json_object("category_aliases")

    @property
    def checkpoint_url(self) -> str:
        return self.sam_checkpoint_url or OFFICIAL_CHECKPOINTS.get(self.sam_engine, "")

    @property
    def embedding_disk_path(self) -> Path:
        return Path(self.embedding_disk_dir or Path(self.model_dir) / "embeddings")

    @property
    def checkpoint_source(self) -> str:
        """What SAM_ENGINE loads: a hub id or save_pretrained folder (sam2, sam_hq), else the checkpoint file."""
        if self.sam_engine in HUB_CHECKPOINTS:
            return self.sam_checkpoint or HUB_CHECKPOINTS[self.sam_engine]
        return str(self.checkpoint_path)

    @property
    def checkpoint_name(self) -> str:
        """The checkpoint's short name in model versions: 'mobile_sam', 'sam2.1-hiera-tiny'."""
        if self.sam_engine in HUB_CHECKPOINTS:
            return Path(self.checkpoint_source.rstrip("/")).name
        return self.checkpoint_path.stem

    @property
    def checkpoint_path(self) -> Path:
        if self.sam_checkpoint:
            return Path(self.sam_checkpoint)
        name = Path(self.checkpoint_url).name or f"{self.sam_engine}.pth"
        return Path(self.model_dir) / "checkpoints" / name


def check_startup(settings: Settings, hosts: list[str]) -> None:
    """SettingsError listing every reason not to serve on `hosts` with `settings` (gunicorn and _wsgi.py)."""
    exposure = settings.exposure_problem(hosts)
    problems = settings.problems() + ([exposure] if exposure else [])
    if problems:
        raise SettingsError(problems)


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.startswith("unix:")  # a unix socket is not on the network


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (call `get_settings.cache_clear()` after changing the environment)."""
    return Settings.from_env()
