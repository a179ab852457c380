import pytest

from backend.core.errors import InputError
from backend.core.label_config import parse_label_config
from tests.helpers import LABEL_CONFIG, POLYGON_CONFIG


def test_brush_config():
    config = parse_label_config(LABEL_CONFIG)
    assert config.image_key == "image" and config.image_name == "image"
    control, label = config.output_for("Disk")
    assert (control.name, control.tag, control.result_type, label) == ("tag", "BrushLabels", "brushlabels", "Disk")


def test_polygon_config():
    control, _ = parse_label_config(POLYGON_CONFIG).output_for("Background")
    assert control.tag == "PolygonLabels" and control.result_type == "polygonlabels"


def test_unknown_label_names_the_known_ones():
    with pytest.raises(InputError, match=r"unknown label 'Cat'.*\['Background', 'Disk'\]"):
        parse_label_config(LABEL_CONFIG).output_for("Cat")


def test_missing_label_with_several_choices_is_an_error():
    with pytest.raises(InputError, match="no label"):
        parse_label_config(LABEL_CONFIG).output_for(None)


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "empty labeling config"),
        ("<View><Text name='t' value='$text'/></View>", "no <Image>"),
        ("<View><Image name='i' value='$img'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
         "no <BrushLabels> or <PolygonLabels>"),
        ("<View><Image", "cannot be parsed"),
    ],
)
def test_unusable_configs(config, message):
    with pytest.raises(InputError, match=message):
        parse_label_config(config)


def test_every_shipped_config_is_well_formed_xml():
    import xml.etree.ElementTree as ElementTree

    from label_studio_sdk.label_interface import LabelInterface

    from tests.processes import ROOT

    configs = [ROOT / "label_config.xml", *sorted((ROOT / "label_configs").glob("*.xml"))]
    assert len(configs) >= 4
    for path in configs:
        ElementTree.fromstring(path.read_text())  # Label Studio refuses what does not parse
        assert LabelInterface(path.read_text()).get_object("image") is not None, path


def test_the_config_cache_keeps_digests_not_configs_and_refuses_huge_configs():
    """140 distinct 9 MB configs grew a worker by 0.68 GB: the cache held every config string."""
    import tracemalloc

    from backend.core.label_config import MAX_CONFIG_BYTES

    with pytest.raises(InputError, match="larger than 1024 KB"):
        parse_label_config(LABEL_CONFIG + "<!--" + "x" * MAX_CONFIG_BYTES + "-->")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(30):  # 30 distinct configs of 500 KB: 15 MB if they were kept
        parse_label_config(LABEL_CONFIG + f"<!-- {index} " + "x" * 500_000 + " -->")
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 5 << 20, grown
    assert all(len(key) == 64 for key in parse_label_config.cache)
