"""LocalSource: listing, ids, splits, looping, bad input and URLs served from memory.

Files written to tmp_path hold no video (empty, random bytes, text); real footage is read from
../shared/videos, and URLs are served from memory by a local http.server.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import videotools
from shared_paths import VIDEOS

from video_sources import LocalSource, VideoSource

STREET = VIDEOS / "street_short.mp4"  # 5 frames, 960 x 540
POSETRACK = VIDEOS / "posetrack_short.mp4"  # 5 frames, 1280 x 720
ALL_IDS = ["basketball_multi", "basketball_single", "posetrack_short", "running_athlete",
           "street_short"]
SMALL = {"max_side": 64}  # keeps decoding cheap where the size does not matter

pytestmark = pytest.mark.skipif(not STREET.is_file(), reason=f"test footage missing: {VIDEOS}")


def warnings_naming(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def ids_of(frames) -> list[str]:
    return [f.video.id for f in frames]


class _Handler(BaseHTTPRequestHandler):
    """/videos/NAME: a file of ../shared/videos, read per request; /chunked/NAME: the same with
    no Content-Length; /truncated/NAME: its first half, moov first; /slow: answers after 2 s."""

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "slow":
            time.sleep(2)
        path = VIDEOS / name
        if kind not in ("videos", "chunked", "truncated", "slow") or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        if kind == "truncated":
            body = videotools.faststart(body)[: len(body) // 2]
        self.send_response(200)
        if kind != "chunked":  # HTTP/1.0 without a length: the body ends when the socket closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    """Base URL of an HTTP server on a free port of 127.0.0.1."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_frames_of_one_file():
    source = LocalSource(str(STREET))
    frames = list(source)
    assert isinstance(source, VideoSource) and source.kind == "local"
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([f.time_s for f in frames], [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    frame = frames[0]
    assert frame.image.shape == (540, 960, 3) and frame.image.dtype == np.uint8
    assert (frame.video.id, frame.video.kind, frame.video.uri) == ("street_short", "local",
                                                                   str(STREET))
    assert frame.K is None
    assert (source.stats.videos_ok, source.stats.frames, source.stats.videos_skipped) == (1, 5, 0)


def test_directory_lists_videos_sorted_without_decoding(caplog):
    source = LocalSource(VIDEOS, split="all")  # also holds SOURCES.md
    assert source.video_ids() == ALL_IDS
    assert source.stats.frames == 0 and not caplog.records


def test_directory_is_not_recursive_and_extensions_are_case_insensitive(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "deep.mp4").touch()
    for name in ("b.MP4", "a.webm", "c.mkv", "notes.txt"):
        (tmp_path / name).touch()
    assert LocalSource(tmp_path, split="all").video_ids() == ["a", "b", "c"]


def test_options_apply_per_video():
    source = LocalSource([STREET, POSETRACK], frameskip=2, max_frames=2, max_side=100)
    frames = list(source)
    assert [(f.video.id, f.index) for f in frames] == [
        ("street_short", 0), ("street_short", 2), ("posetrack_short", 0), ("posetrack_short", 2)]
    assert {f.image.shape for f in frames} == {(56, 100, 3)}


def test_loop_cycles_over_the_list():
    source = LocalSource([STREET, POSETRACK], loop=True, **SMALL)
    frames = list(itertools.islice(source, 20))
    assert ids_of(frames) == (["street_short"] * 5 + ["posetrack_short"] * 5) * 2
    assert [f.index for f in frames] == list(range(5)) * 4


def test_stopping_early_closes_the_container(monkeypatch):
    exits = videotools.record_container_exits(monkeypatch)
    frames = iter(LocalSource([STREET, POSETRACK], loop=True, **SMALL))
    next(frames)
    frames.close()
    assert exits == [GeneratorExit]


def test_without_loop_the_stream_ends():
    assert len(list(LocalSource([STREET, POSETRACK], **SMALL))) == 10


def test_missing_path_is_named_at_construction(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        LocalSource([str(STREET), str(missing)])


@pytest.mark.parametrize("paths", [[], "EMPTY_DIR"])
def test_no_video_at_all_is_an_error(tmp_path, paths):
    with pytest.raises(ValueError, match="no video"):
        LocalSource(str(tmp_path) if paths == "EMPTY_DIR" else paths)


@pytest.mark.parametrize(
    "options", [{"split": "test"}, {"val_fraction": 1.0}, {"max_bytes": 0}, {"frameskip": 0},
                {"timeout_s": 0}]
)
def test_invalid_options_fail_at_construction(options):
    with pytest.raises(ValueError):
        LocalSource(str(STREET), **options)


def test_same_stem_gets_a_suffix_and_repeats_are_dropped(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.mp4").touch()
    first, second = str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")
    source = LocalSource([first, second, first, tmp_path / "a"], split="all")
    assert source.video_ids() == ["clip", "clip-2"]


def test_symlink_keeps_its_own_name_as_id(tmp_path):
    link = tmp_path / "phone_clip.mp4"
    link.symlink_to(STREET)  # a link, no video bytes
    frames = list(LocalSource(link, max_frames=1, **SMALL))
    assert [f.video.id for f in frames] == ["phone_clip"]


def test_url_ids_drop_query_and_extension(server):
    source = LocalSource([f"{server}/videos/street_short.mp4?x=1", str(STREET)], split="all")
    assert source.video_ids() == ["street_short", "street_short-2"]


def test_split_by_val_videos():
    train = LocalSource(VIDEOS, val_videos=["street_short", "running_athlete"]).video_ids()
    val = LocalSource(VIDEOS, split="val", val_videos=["street_short", "running_athlete"])
    assert val.video_ids() == ["running_athlete", "street_short"]
    assert sorted(train + val.video_ids()) == ALL_IDS and not set(train) & set(val.video_ids())


def test_unknown_val_video_is_an_error():
    with pytest.raises(ValueError, match="stret_short"):
        LocalSource(VIDEOS, val_videos=["stret_short"])


@pytest.mark.parametrize("fraction", [0.001, 0.4, 0.999])
def test_split_by_val_fraction(fraction):
    train = LocalSource(VIDEOS, val_fraction=fraction).video_ids()
    val = LocalSource(VIDEOS, split="val", val_fraction=fraction).video_ids()
    assert train and val and not set(train) & set(val)
    assert sorted(train + val) == ALL_IDS
    # By a hash of the id, not by position: the same split from the files in reverse order.
    reverse = sorted(VIDEOS.glob("*.mp4"), reverse=True)
    assert sorted(LocalSource(reverse, split="val", val_fraction=fraction).video_ids()) == val


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="val"):
        LocalSource(VIDEOS, split="val")


BAD_FILES = {
    "empty.mp4": b"",
    "random.mp4": np.random.default_rng(0).bytes(4096),
    "text.mp4": b"this is a text file, not a video\n" * 50,
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_is_skipped_once_and_the_stream_goes_on(tmp_path, caplog, name):
    bad = tmp_path / name
    bad.write_bytes(BAD_FILES[name])  # holds no video
    source = LocalSource([bad, STREET], max_frames=2, **SMALL)
    frames = list(source)
    assert ids_of(frames) == ["street_short"] * 2
    assert len(warnings_naming(caplog, str(bad))) == 1
    assert source.stats.videos_skipped == 1 and source.stats.videos_ok == 1
    assert source.stats.skipped[0][0] == str(bad)


@pytest.mark.timeout(30)  # the failure mode is spinning forever
def test_loop_over_only_bad_videos_stops_with_a_clear_error(tmp_path, caplog):
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    source = LocalSource(tmp_path, split="all", loop=True)
    with pytest.raises(RuntimeError, match="no readable video"):
        list(source)
    assert source.stats.videos_skipped == 3 and len(warnings_naming(caplog, "skipping")) == 3


def test_bad_video_is_not_retried_on_later_passes(tmp_path, caplog):
    bad = tmp_path / "empty.mp4"
    bad.touch()
    frames = list(itertools.islice(LocalSource([bad, STREET], loop=True, **SMALL), 15))
    assert ids_of(frames) == ["street_short"] * 15
    assert len(warnings_naming(caplog, str(bad))) == 1


def test_file_over_max_bytes_is_skipped(caplog):
    source = LocalSource([STREET, POSETRACK], max_bytes=POSETRACK.stat().st_size, **SMALL)
    assert set(ids_of(source)) == {"posetrack_short"}
    assert len(warnings_naming(caplog, str(STREET))) == 1


def test_valid_url(server):
    url = f"{server}/videos/street_short.mp4"
    with_url = LocalSource(url)
    frames = list(with_url)
    with_url.close()
    from_disk = list(LocalSource(str(STREET)))
    assert (frames[0].video.kind, frames[0].video.uri, frames[0].video.id) == (
        "url", url, "street_short")
    assert len(frames) == 5
    for a, b in zip(frames, from_disk):
        assert a.time_s == b.time_s
        np.testing.assert_array_equal(a.image, b.image)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# max_bytes=180_000 lies between posetrack_short.mp4 (158,849 bytes) and street_short.mp4 (204,863).
@pytest.mark.parametrize(
    ("url", "options", "reason"),
    [
        ("{server}/videos/absent.mp4", {}, "HTTP 404"),
        ("{server}/videos/street_short.mp4", {"max_bytes": 180_000}, "Content-Length"),
        ("{server}/chunked/street_short.mp4", {"max_bytes": 180_000}, "over max_bytes"),
        ("http://127.0.0.1:{port}/video.mp4", {}, "ConnectionError"),
        ("{server}/slow/street_short.mp4", {"timeout_s": 0.5}, "timed out"),
    ],
    ids=["404", "content-length-over-cap", "streamed-body-over-cap", "refused", "timeout"],
)
def test_failed_download_is_skipped_once_and_the_stream_goes_on(
    server, caplog, url, options, reason
):
    url = url.format(server=server, port=_free_port())
    source = LocalSource([url, f"{server}/videos/posetrack_short.mp4"], max_frames=2, **options,
                         **SMALL)
    assert ids_of(source) == ["posetrack_short"] * 2
    logged = warnings_naming(caplog, url)
    assert len(logged) == 1 and reason in logged[0].getMessage()
    assert source.stats.videos_skipped == 1 and source.stats.skipped[0][0] == url
    source.close()


def test_truncated_download_keeps_its_frames_and_logs_once(server, caplog):
    url = f"{server}/truncated/basketball_single.mp4"
    source = LocalSource([url, str(STREET)], **SMALL)
    frames = list(source)
    truncated = [f for f in frames if f.video.uri == url]
    assert 0 < len(truncated) < 40
    assert ids_of(frames[len(truncated):]) == ["street_short"] * 5
    assert len(warnings_naming(caplog, url)) == 1
    assert (source.stats.videos_ok, source.stats.videos_skipped) == (2, 0)


def test_interpreter_exits_after_breaking_out_of_the_stream():
    script = (
        "from video_sources import LocalSource\n"
        f"for i, frame in enumerate(LocalSource({str(VIDEOS / 'running_athlete.mp4')!r},"
        " loop=True)):\n"
        "    if i == 3:\n"
        "        break\n"
        "print('done', frame.image.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert result.returncode == 0, result.stderr
    assert "done (1088, 1920, 3)" in result.stdout
