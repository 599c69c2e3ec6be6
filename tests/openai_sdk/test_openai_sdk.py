"""The official `openai` Python SDK, unmodified, against a real `omni serve` on the tiny checkpoint.

Run with `tests/openai_sdk/run.sh` (or `pytest tests/openai_sdk`) after `cargo test --release` has
built `target/release/omni`; env `OMNI_BIN` names another binary. Each server runs on a free port
with its own temporary storage folder and is killed at the end.
"""

import os
import pathlib
import subprocess
import time
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("OMNI_BIN", ROOT / "target" / "release" / "omni"))
MODEL = ROOT / "tests" / "fixtures" / "tiny-helios-distilled"
SMALL = "128x64"
# One 33-frame chunk: the fastest job the tiny checkpoint runs.
ONE_CHUNK = {"num_frames": 33, "fps": 12}

# The SDK marks the Videos API deprecated; that is not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Server:
    def __init__(self, storage, extra=()):
        if not BIN.is_file():
            pytest.fail(f"{BIN} is missing: run `cargo test --release` (or `cargo build --release`) first")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", str(MODEL), "--port", "0", "--served-model-name", "tiny-helios",
             "--storage", str(storage), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        prefix = "omni serve listening on "
        assert line.startswith(prefix), f"unexpected first line: {line!r}"
        self.base = line[len(prefix):].strip()
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.base + "/readyz") as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the model never became ready"
            time.sleep(0.05)

    def client(self, api_key="sk-anything"):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("storage"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_create_and_poll_with_string_seconds_then_download(client):
    # The SDK sends multipart/form-data with `seconds` as the string enum "4".
    v = client.videos.create_and_poll(
        prompt="a red cube", seconds="4", size=SMALL, model="tiny-helios", poll_interval_ms=50
    )
    assert v.object == "video"
    assert v.status == "completed", v
    assert v.progress == 100
    assert v.seconds == "4"
    assert v.size == SMALL
    assert v.model == "tiny-helios"
    assert v.completed_at is not None and v.completed_at >= v.created_at
    assert v.error is None
    # 4 s at the checkpoint's fps, rounded up to whole chunks.
    assert v.model_extra["num_frames"] >= 4 * v.model_extra["fps"]

    got = client.videos.retrieve(v.id)
    assert (got.id, got.status, got.progress) == (v.id, "completed", 100)

    mp4 = client.videos.download_content(v.id).read()
    assert mp4[4:8] == b"ftyp"
    assert client.videos.download_content(v.id, variant="video").read() == mp4
    thumb = client.videos.download_content(v.id, variant="thumbnail").read()
    assert thumb[:4] == b"RIFF" and thumb[8:12] == b"WEBP"
    sheet = client.videos.download_content(v.id, variant="spritesheet").read()
    assert sheet[:3] == b"\xff\xd8\xff"


def test_poll_helper_follows_progress_and_extra_body(client):
    # extra_body becomes more form parts, nested ones in bracket notation.
    v = client.videos.create(
        prompt="a blue sphere",
        size=SMALL,
        extra_body={**ONE_CHUNK, "seed": 7, "extra_params": {"pyramid_num_inference_steps_list": [1, 1, 1]}},
    )
    assert v.status in ("queued", "in_progress")
    done = client.videos.poll(v.id, poll_interval_ms=20)
    assert done.status == "completed", done
    assert done.model_extra["num_frames"] == 33
    assert done.model_extra["fps"] == 12


def test_list_pages_with_limit_after_and_auto_pagination(server, tmp_path):
    s = Server(tmp_path / "st")
    try:
        c = s.client()
        ids = [
            c.videos.create(prompt=f"clip {i}", size=SMALL, extra_body=ONE_CHUNK).id for i in range(5)
        ]
        for i in ids:
            assert c.videos.poll(i, poll_interval_ms=20).status == "completed"

        # Newest first by default.
        page = c.videos.list(limit=2)
        assert [v.id for v in page.data] == ids[::-1][:2]
        assert page.has_more is True
        assert page.last_id == ids[3]
        page2 = c.videos.list(limit=2, after=page.last_id)
        assert [v.id for v in page2.data] == [ids[2], ids[1]]
        # The SDK's own next-page logic (after = last_id).
        assert page.has_next_page()
        assert [v.id for v in page.get_next_page().data] == [ids[2], ids[1]]

        # Auto-pagination walks every page.
        assert [v.id for v in c.videos.list(limit=2)] == ids[::-1]
        assert [v.id for v in c.videos.list(limit=2, order="asc")] == ids

        last = c.videos.list(limit=2, after=ids[1])
        assert [v.id for v in last.data] == [ids[0]]
        assert last.has_more is False
        assert not last.has_next_page()
    finally:
        s.stop()


def test_delete_then_not_found(client):
    v = client.videos.create_and_poll(prompt="to delete", size=SMALL, extra_body=ONE_CHUNK, poll_interval_ms=20)
    d = client.videos.delete(v.id)
    assert d.id == v.id and d.deleted is True and d.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(v.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(v.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(v.id)


def test_sora_size_is_accepted_and_a_running_job_can_be_deleted(client):
    # The SDK's own size and seconds enums; deleted before it costs much time.
    v = client.videos.create(prompt="a portrait clip", size="720x1280", seconds="8")
    # Snapped to the 64-pixel grid of the 3-stage pyramid.
    assert v.size == "704x1280" and v.seconds == "8"
    assert client.videos.delete(v.id).deleted is True


def test_errors_map_to_the_sdk_exception_classes(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="   ", size=SMALL)
    assert e.value.status_code == 400
    assert e.value.param == "prompt"
    assert e.value.code == "invalid_request"
    assert "prompt" in e.value.message

    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="p", size="640x")
    assert e.value.param == "size"

    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="p", model="sora-2")
    assert e.value.param == "model"

    with pytest.raises(openai.BadRequestError):
        client.videos.download_content("video_0123456789abcdef0123456789abcdef", variant="nope")

    with pytest.raises(openai.NotFoundError) as e:
        client.videos.retrieve("video_0123456789abcdef0123456789abcdef")
    assert e.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("nope")

    with pytest.raises(openai.BadRequestError):
        client.videos.list(limit=101).data


def test_api_keys_raise_authentication_error(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('api_keys = ["sk-right"]\n')
    s = Server(tmp_path / "st", ["--config", str(cfg)])
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            s.client("sk-wrong").videos.list()
        assert e.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            s.client("sk-wrong").videos.create(prompt="p", size=SMALL)
        assert s.client("sk-right").videos.list().data == []
        assert [m.id for m in s.client("sk-right").models.list()] == ["tiny-helios"]
    finally:
        s.stop()


def test_remix_extend_and_edit_through_the_sdk(client):
    # `videos.remix`: the source's size, frames, fps and seed with a new prompt.
    src = client.videos.create_and_poll(
        prompt="a red cube", size=SMALL, extra_body={**ONE_CHUNK, "seed": 5}, poll_interval_ms=20
    )
    assert src.status == "completed", src
    r = client.videos.remix(src.id, prompt="a green cube")
    assert r.remixed_from_video_id == src.id
    assert (r.prompt, r.size, r.seconds, r.model) == ("a green cube", src.size, src.seconds, src.model)
    done = client.videos.poll(r.id, poll_interval_ms=20)
    assert done.status == "completed", done
    assert done.remixed_from_video_id == src.id
    assert done.model_extra["num_frames"] == src.model_extra["num_frames"]

    # `videos.extend` and `videos.edit` with an uploaded MP4 (multipart `video` file part).
    mp4 = client.videos.download_content(src.id).read()
    e = client.videos.extend(prompt="the cube rolls on", seconds="4", video=("src.mp4", mp4, "video/mp4"),
                             extra_body={"size": SMALL, "num_frames": 33})
    assert e.remixed_from_video_id is None and e.seconds == "4"
    assert client.videos.poll(e.id, poll_interval_ms=20).status == "completed"
    ed = client.videos.edit(prompt="a blue cube", video=("src.mp4", mp4, "video/mp4"),
                            extra_body={"size": SMALL, "num_frames": 33})
    assert ed.remixed_from_video_id is None
    assert client.videos.poll(ed.id, poll_interval_ms=20).status == "completed"

    # `video={"id": ...}`: openai 3.x's `extend`/`edit` refuse a dict client-side (their
    # `extract_files` wants file content), so the reference by id goes through the SDK's generic
    # `post` as JSON: the source's size, fps and seed below the body.
    for path in ("/videos/extensions", "/videos/edits"):
        v = client.post(path, cast_to=openai.types.Video,
                        body={"prompt": "the cube rolls on", "seconds": "4", "num_frames": 33,
                              "video": {"id": src.id}})
        assert v.remixed_from_video_id == src.id and v.size == src.size
        assert client.videos.poll(v.id, poll_interval_ms=20).status == "completed"

    missing = "video_0123456789abcdef0123456789abcdef"
    with pytest.raises(openai.NotFoundError):
        client.videos.remix(missing, prompt="p")
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/videos/extensions", cast_to=openai.types.Video,
                    body={"prompt": "p", "seconds": "4", "video": {"id": missing}})
    assert err.value.param == "video"


def test_character_endpoints_answer_501(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.videos.create_character(name="cat", video=("c.mp4", b"\x00" * 16, "video/mp4"))
    assert e.value.status_code == 501
    assert e.value.code == "not_implemented"
    with pytest.raises(openai.InternalServerError) as e:
        client.videos.get_character("char_123")
    assert e.value.status_code == 501


def test_webhook_events_verify_with_the_sdk(tmp_path):
    # A loopback receiver; the SDK's own `webhooks.unwrap` checks omni's Standard Webhooks signature.
    import base64
    import http.server
    import json
    import threading

    got = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    secret = "whsec_" + base64.b64encode(b"omni-sdk-test-signing-key-32byte").decode()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[webhooks]\nsecret = "{secret}"\nallow_hosts = ["127.0.0.1"]\n')
    s = Server(tmp_path / "st", ["--config", str(cfg)])
    try:
        c = s.client()
        hook = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        v = c.videos.create_and_poll(prompt="a red cube", size=SMALL, poll_interval_ms=20,
                                     extra_body={**ONE_CHUNK, "webhook_url": hook})
        assert v.status == "completed"
        deadline = time.time() + 60
        while not got:
            assert time.time() < deadline, "no webhook arrived"
            time.sleep(0.02)
        headers, body = got[0]
        # (`unwrap` would also parse it, but its event union has no video types yet.)
        c.webhooks.verify_signature(body, headers, secret=secret)
        event = json.loads(body)
        assert event["object"] == "event"
        assert event["type"] == "video.completed" and event["data"]["id"] == v.id
        assert headers["webhook-id"] == event["id"]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            c.webhooks.verify_signature(body, headers, secret="whsec_" + base64.b64encode(b"another-key").decode())
    finally:
        s.stop()
        httpd.shutdown()


def test_lora_interpolation_and_upscale_through_extra_body(tmp_path):
    # vLLM-Omni's request fields as the SDK sends them: `extra_body` (form parts, the `lora`
    # object in bracket notation).
    fixtures = ROOT / "tests" / "fixtures"
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'lora_dirs = ["{fixtures / "lora"}"]\n')
    s = Server(tmp_path / "st", ["--config", str(cfg),
                                 "--rife-model", str(fixtures / "rife" / "flownet.pkl"),
                                 "--upscale-model", str(fixtures / "esrgan" / "srvgg_x4.pth")])
    try:
        c = s.client()
        v = c.videos.create_and_poll(
            prompt="a lighthouse", size=SMALL, poll_interval_ms=20,
            extra_body={"num_frames": 33, "lora": {"path": "peft_a", "scale": 0.5},
                        "enable_frame_interpolation": True, "frame_interpolation_exp": 1,
                        "enable_upscale": True, "upscale_factor": 2},
        )
        assert v.status == "completed", v
        assert v.size == "256x128"
        assert (v.model_extra["num_frames"], v.model_extra["fps"]) == (65, 48)
        mp4 = tmp_path / "out.mp4"
        mp4.write_bytes(c.videos.download_content(v.id).read())
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
             "stream=width,height,nb_read_frames", "-of", "csv=p=0", str(mp4)],
            check=True, capture_output=True, text=True).stdout.strip()
        assert probe == "256,128,65"
        for extra, param in [
            ({"upscale_factor": 2}, "upscale_factor"),
            ({"frame_interpolation_exp": 2}, "frame_interpolation_exp"),
            ({"enable_upscale": True, "upscale_factor": 3}, "upscale_factor"),
            ({"lora": {"path": "/etc/passwd"}}, "lora"),
        ]:
            with pytest.raises(openai.BadRequestError) as e:
                c.videos.create(prompt="p", size=SMALL, extra_body=extra)
            assert e.value.param == param, extra
    finally:
        s.stop()
