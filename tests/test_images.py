import numpy as np
import pytest

from backend.core.errors import ImageError, InputError
from backend.core.settings import Settings
from backend.io.images import read_task_image
from tests.helpers import data_uri, disk_image, encode_image, free_port


@pytest.fixture
def settings(tmp_path):
    return Settings(image_cache_dir=str(tmp_path / "cache"), download_timeout=5, image_url_hosts="127.0.0.1")


def test_data_uri(settings):
    image, _ = disk_image()
    loaded = read_task_image(data_uri(encode_image(image)), settings)
    assert np.array_equal(loaded.decode(), image)
    assert len(loaded.key) == 64


def test_exif_orientation_is_applied(settings):
    image, _ = disk_image(320, 240)
    # orientation 6: the viewer rotates 90 degrees clockwise, so the displayed image is 240 wide, 320 high
    loaded = read_task_image(data_uri(encode_image(image, "JPEG", exif_orientation=6), "image/jpeg"), settings)
    assert loaded.decode().shape == (320, 240, 3)


def test_plain_url_is_downloaded_once(settings, file_server):
    image, _ = disk_image()
    url = file_server.serve("/pics/a.png", encode_image(image))
    first = read_task_image(url, settings)
    second = read_task_image(url, settings)
    assert first.key == second.key
    assert len([r for r in file_server.requests if r["path"] == "/pics/a.png"]) == 1  # cached on disk


def test_label_studio_upload_uses_url_and_token(tmp_path, file_server):
    image, _ = disk_image()
    body = encode_image(image)
    file_server.serve("/storage-data/uploaded/?filepath=upload/1/a.png", body, token="secret-token")
    settings = Settings(image_cache_dir=str(tmp_path), label_studio_url=file_server.url,
                        label_studio_api_key="secret-token")
    loaded = read_task_image("/data/upload/1/a.png", settings, task_id=7)
    assert loaded.data == body
    assert file_server.requests[-1]["auth"] == "Token secret-token"


def test_wrong_token_says_check_the_key(tmp_path, file_server):
    file_server.serve("/storage-data/uploaded/?filepath=upload/1/b.png", b"x", token="right")
    settings = Settings(image_cache_dir=str(tmp_path), label_studio_url=file_server.url, label_studio_api_key="wrong")
    with pytest.raises(ImageError, match="HTTP 401.*LABEL_STUDIO_API_KEY"):
        read_task_image("/data/upload/1/b.png", settings)


def test_upload_without_label_studio_url(settings):
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        read_task_image("/data/upload/1/a.png", settings)


def test_unreachable_storage(settings):
    with pytest.raises(ImageError, match="download failed within DOWNLOAD_TIMEOUT=5 s: ConnectionError") as info:
        read_task_image(f"http://127.0.0.1:{free_port()}/missing.png", settings)
    assert "missing.png" in info.value.where


def test_missing_file_is_404(settings, file_server):
    with pytest.raises(ImageError, match="HTTP 404"):
        read_task_image(file_server.url + "/nope.png", settings)


def test_broken_and_empty_images(settings):
    with pytest.raises(ImageError, match="not a readable image"):
        read_task_image(data_uri(b"this is not an image"), settings).decode()
    with pytest.raises(ImageError, match="0 bytes"):
        read_task_image("data:image/png;base64,", settings)
    with pytest.raises(InputError, match="empty or not a string"):
        read_task_image("", settings, task_id=3)
    with pytest.raises(InputError, match="task 3"):
        read_task_image(None, settings, task_id=3)


def test_local_files_only_below_the_document_root(tmp_path):
    image, _ = disk_image()
    inside = tmp_path / "root" / "a.png"
    inside.parent.mkdir()
    inside.write_bytes(encode_image(image))
    outside = tmp_path / "b.png"
    outside.write_bytes(encode_image(image))
    settings = Settings(local_files_document_root=str(tmp_path / "root"))
    assert read_task_image(str(inside), settings).decode().shape == image.shape
    with pytest.raises(ImageError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        read_task_image(str(outside), settings)
    with pytest.raises(ImageError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        read_task_image(str(tmp_path / "root" / ".." / "b.png"), settings)
    with pytest.raises(ImageError, match="cannot read local file"):
        read_task_image(str(tmp_path / "root" / "gone.png"), settings)


def test_decompression_bomb_is_refused(settings):
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        read_task_image(data_uri(encode_image(image)), settings).decode(max_pixels=1000)


def _png(img) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_image_mode_is_read_as_the_browser_shows_it(settings):
    """16-bit grayscale scaled (not clipped), transparency over white, palette, CMYK, grayscale, EXIF."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None].repeat(4, 0)
    gray16 = read_task_image(data_uri(_png(Image.fromarray(ramp))), settings).decode()
    assert gray16.shape == (4, 256, 3) and abs(int(gray16[0, 128, 0]) - 128) <= 1 and gray16[0, 255, 0] == 255

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3], rgba[4:, :, 3] = 200, 255, 0  # top opaque red-ish, bottom transparent
    shown = read_task_image(data_uri(_png(Image.fromarray(rgba, "RGBA"))), settings).decode()
    assert tuple(shown[0, 0]) == (200, 0, 0) and tuple(shown[7, 7]) == (255, 255, 255)

    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[7, 7])
    shown = read_task_image(data_uri(_png(palette)), settings).decode()
    assert tuple(shown[7, 7]) == (255, 255, 255)

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    red = read_task_image(data_uri(buffer.getvalue(), "image/jpeg"), settings).decode()[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    gray = read_task_image(data_uri(_png(Image.fromarray(np.full((5, 5), 77, np.uint8)))), settings).decode()
    assert gray.shape == (5, 5, 3) and (gray == 77).all()


MEASURE = """
import io, sys
sys.path.insert(0, sys.argv[2])
from backend.io.images import TaskImage, decode_bytes
from PIL import Image

def status(name):  # kB in /proc/self/status
    return int(next(line for line in open("/proc/self/status") if line.startswith(name)).split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
with Image.open(io.BytesIO(data)) as img:
    estimate = decode_bytes(img)
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from the current size
base = status("VmRSS")
TaskImage(data=data, source="x").decode(10**9, 10**6)
print(estimate, status("VmHWM") - base)
"""


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "PT", "I;16"])
def test_the_decode_memory_estimate_covers_the_measured_peak(mode, tmp_path):
    """MAX_IMAGE_MEMORY_MB and MEMORY_BUDGET_MB work from this estimate: it must not be under the real peak (an
    8000^2 16-bit PNG peaked at 1.71 GB against a 0.98 GB estimate), nor far over it."""
    import subprocess
    import sys

    from PIL import Image

    from tests.processes import ROOT

    rng = np.random.default_rng(0)
    side = 3000
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16))
    elif mode in ("P", "PT"):
        image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).quantize(32)
        if mode == "PT":
            image.info["transparency"] = 0
    else:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        image = Image.fromarray(rng.integers(0, 255, (side, side, channels), dtype=np.uint8).squeeze())
    path = tmp_path / "image.png"
    image.save(path, transparency=0) if mode == "PT" else image.save(path)
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(ROOT)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    estimate, measured = map(int, run.stdout.split())
    assert measured <= estimate <= 2.5 * measured, (mode, estimate / side**2, measured / side**2)
