"""What client code in the wild sends (CONTRACT 9), through a real API and worker on `tiny`: the
real segmind SDK on Segmind's older slug, and plain HTTP for each spelling of the table."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient

from app.core.client_spellings import SAMPLER_IDS, normalise_spellings, scheduler_name
from app.core.request_model import field_rules, validate_body
from app.core.scheduler_names import SCHEDULER_NAMES
from tests.stack import start_full_stack
from tests.test_e2e_api import FAST, IMAGE, decode

pytestmark = pytest.mark.e2e
OLD_SLUG = "sdxl1.0-img2img"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(stack) -> str:
    return stack.create_key(name="wild", credits=1000)


@pytest.fixture
def http(stack, key):
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=120) as client:
        yield client


def test_the_sdk_on_the_older_slug_with_the_spellings_of_the_wild(stack, key):
    client = SegmindClient(api_key=key, base_url=f"{stack.base_url}/v1", timeout=120)
    response = client.run_sync(
        OLD_SLUG,
        init_image=IMAGE,
        prompt="a lighthouse",
        steps=20,
        strength=0.5,
        base_model="tiny",
        scheduler="dpmpp_2m_karras",
        output_format="jpg",
        seed=5,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-seed-value"] == "5"
    # the credit headers such code reads
    assert response.headers["x-credits-consumed"] == response.headers["x-cost"] == "1"
    assert int(response.headers["x-remaining-credits"]) < 1000
    assert "x-ignored-fields" not in response.headers
    result = client.run(OLD_SLUG, init_image=IMAGE, prompt="a boat", steps=20, base_model="tiny", seed=3)
    assert result["status"] == "COMPLETED" and result["seeds"] == [3]


def test_the_same_request_spelled_both_ways_gives_the_same_bytes(http):
    documented = {
        "image": IMAGE,
        "prompt": "a red barn",
        "num_inference_steps": 20,
        "scheduler": "Euler a",
        "output_format": "jpeg",
        "seed": 11,
        **FAST,
    }
    wild = {
        "init_image": IMAGE,
        "prompt": "a red barn",
        "steps": 20,
        "scheduler": "euler_ancestral",
        "output_format": "jpg",
        "seed": 11,
        "base_model": "tiny",
        "strength": 0.5,
    }
    first = http.post("/v1/sdxl-img2img", json=documented)
    second = http.post(f"/v1/{OLD_SLUG}", json=wild)
    assert first.status_code == second.status_code == 200, second.text
    assert first.content == second.content


def test_the_documented_field_wins_when_both_are_sent(http):
    response = http.post(
        "/v1/sdxl-img2img",
        json={"image": IMAGE, "init_image": "not an image", "prompt": "x", "steps": 5, **FAST, "seed": 1},
    )
    # init_image and steps=5 (out of range) would be refused: the documented fields were used
    assert response.status_code == 200, response.text


def test_unknown_fields_are_named_in_x_ignored_fields(http):
    response = http.post(
        "/v2/sdxl-img2img",
        json={"image": IMAGE, "prompt": "x", "guidence_scale": 9, "negative": "y", **FAST},
    )
    assert response.status_code == 200
    assert response.headers["x-ignored-fields"] == "guidence_scale,negative"


def test_img_width_and_height_set_the_working_size(http):
    response = http.post(
        "/v1/sdxl-img2img",
        json={"image": IMAGE, "prompt": "x", "img_width": 203, "img_height": 150, "base64": True, **FAST},
    )
    assert response.status_code == 200, response.text
    import base64

    # the 128x96 input resized to 203x150 (aspect not kept), rounded down to multiples of 8
    assert decode(base64.b64decode(response.json()["image"])).size == (200, 144)
    bad = http.post(
        "/v1/sdxl-img2img", json={"image": IMAGE, "prompt": "x", "img_width": 10, "img_height": 99}
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "img_width must be an integer between 64 and 8192, got 10"


def test_multipart_clients_send_init_image_as_a_file(http):
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), "navy").save(buffer, "PNG")
    fields = {"prompt": "x", "steps": "20", "base_model": "tiny", "strength": "0.5", "output_format": "jpg"}
    response = http.post(f"/v1/{OLD_SLUG}", data=fields, files={"init_image": ("in.png", buffer.getvalue())})
    assert response.status_code == 200, response.text
    assert decode(response.content).size == (96, 64)


def test_another_slug_is_still_not_found(http):
    response = http.post("/v1/sdxl2.0-img2img", json={"image": IMAGE, "prompt": "x"})
    assert response.status_code == 404 and response.json() == {"error": "Model not found"}


# The table itself, without a server: every sampler id and every case of the 30 names.


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_name_in_another_case_is_read_as_itself(name):
    assert scheduler_name(name.lower()) == name
    assert scheduler_name(name.upper()) == name


@pytest.mark.parametrize(
    ("sent", "meant"),
    [
        *SAMPLER_IDS.items(),
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("dpm_2_ancestral_karras", "DPM2 a Karras"),
        ("dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras"),
        ("dpmpp_3m_sde_karras", "DPM++ 3M SDE Karras"),
        ("lms_karras", "LMS Karras"),
        ("dpmpp_sde_karras", "DPM++ SDE Karras"),
    ],
)
def test_sampler_ids_read_as_the_a1111_names(sent, meant):
    assert meant in SCHEDULER_NAMES
    assert scheduler_name(sent) == meant


def test_a_sampler_id_without_a_karras_variant_is_refused_with_the_list():
    with pytest.raises(Exception) as raised:
        validate_body(
            {"image": "x", "prompt": "x", "scheduler": "ddim_karras"},
            model_names=["tiny"],
            default_base_model="tiny",
        )
    assert "scheduler must be one of Euler, Euler a" in str(raised.value)


def test_header_unsafe_names_are_not_echoed():
    spelled = normalise_spellings({"a\r\nb": 1, "ok": 2, "x" * 65: 3, "c,d": 4}, known=field_rules().keys())
    assert spelled.ignored == ("ok",)
