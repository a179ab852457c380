"""All settings, read once from the environment. The README lists each with its default."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from .errors import InputError

OFFICIAL_CHECKPOINTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_t": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
}


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Backend settings. Each field is read from the environment variable of the same name, upper-cased."""

    sam_engine: str = "vit_t"  # vit_t (MobileSAM) | vit_b | vit_l | vit_h | grabcut (no weights)
    sam_checkpoint: str = ""  # default: MODEL_DIR/checkpoints/<official file name>
    sam_checkpoint_url: str = ""  # default: the official download URL of the engine
    sam_download: bool = True  # fetch a missing checkpoint from SAM_CHECKPOINT_URL where the network allows
    sam_arch_overrides: str = ""  # JSON of architecture sizes, for custom-size checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    preload_model: bool = True  # served processes load (or download) the SAM model at start, in the background
    model_dir: str = "data/models"  # checkpoints and fine-tuned versions
    redis_url: str = ""  # shared embedding cache and job queue; empty: in-process
    embedding_cache_mb: int = 1024  # in-process LRU bound, in MiB (without Redis)
    embedding_cache_local_mb: int = 128  # with Redis: each worker's own front LRU, in MiB
    embedding_cache_ttl: int = 7 * 24 * 3600  # seconds an embedding lives in Redis
    embedding_disk_mb: int = 4096  # without Redis: embeddings also kept on disk (shared by workers, kept on restart)
    embedding_disk_dir: str = ""  # default: MODEL_DIR/embeddings
    embedding_float16: bool = True  # keep SAM embeddings as float16: half the cache memory and Redis traffic
    label_studio_url: str = ""  # for uploaded / local-storage / cloud images
    label_studio_api_key: str = ""
    image_cache_dir: str = "data/images"  # downloaded task images
    local_files_document_root: str = ""  # plain local paths in task data are read only below this folder
    max_image_pixels: int = 200_000_000  # larger images are refused
    download_timeout: float = 30.0  # seconds for one image download
    polygon_epsilon: float = 1.5  # contour simplification tolerance, in pixels
    prelabel_mode: str = "categories"  # batch predict without clicks: categories (detector) | everything | off
    detector_model: str = "google/owlv2-base-patch16-ensemble"  # or IDEA-Research/grounding-dino-tiny, or a folder
    detector_threshold: float = 0.3  # detections below this score are dropped
    category_aliases: str = ""  # JSON {"Label": "prompt text" or ["text", ...]} when the label is not a good prompt
    prompt_field: str = "caption"  # task data field whose text adds prompts (comma separated)
    max_detections: int = 50  # per image
    everything_points_per_side: int = 16  # PRELABEL_MODE=everything point grid
    precompute_on_import: bool = False  # embed new tasks' images in the background (TASKS_CREATED webhook)
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"  # hub id or save_pretrained folder
    output_dir: str = "data/outputs"  # generated files (depth maps, synthetic images)
    output_url: str = ""  # URL prefix OUTPUT_DIR is served under; empty: Label Studio local-files URLs
    output_s3_bucket: str = ""  # write generated files to this S3-compatible bucket instead of OUTPUT_DIR
    output_s3_prefix: str = "label-studio-backend"  # key prefix in the bucket
    output_s3_endpoint_url: str = ""  # e.g. http://minio:9000; empty: AWS
    synthesis_engine: str = "kandinsky"  # default engine of generation tasks: kandinsky | sd2
    kandinsky_prior_model: str = "kandinsky-community/kandinsky-2-2-prior"
    kandinsky_inpaint_model: str = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
    sd_inpaint_model: str = "stabilityai/stable-diffusion-2-inpainting"
    synthesis_steps: int = 30
    synthesis_guidance: float = 0.0  # 0: the engine's usual value (Kandinsky 4, SD 7.5)
    synthesis_size: int = 512  # working resolution of the crop around the region
    synthesis_seed: int = 0  # sample i uses seed + i
    synthesis_dilate: int = 8  # pixels the region grows so the object fits
    synthesis_feather: int = 6  # pixels of soft blending at the region's edge
    synthesis_max_samples: int = 8
    synthesis_remove_prompt: str = "background, empty scene, nothing"
    synthesis_target_project: int = 0  # 0: import into the source project
    train_every: int = 10  # start a fine-tuning job after every N new/updated annotations (0: only START_TRAINING)
    train_epochs: int = 20  # upper bound; early stopping usually ends sooner
    job_timeout: int = 6 * 3600  # seconds an RQ job may run
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
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
    def checkpoint_path(self) -> Path:
        if self.sam_checkpoint:
            return Path(self.sam_checkpoint)
        name = Path(self.checkpoint_url).name or f"{self.sam_engine}.pth"
        return Path(self.model_dir) / "checkpoints" / name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (call `get_settings.cache_clear()` after changing the environment)."""
    return Settings.from_env()
