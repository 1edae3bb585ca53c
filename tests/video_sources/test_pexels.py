"""Pexels client and source against a fake Pexels on 127.0.0.1 (tests/fakes/pexels.py).

The fake serves the API's JSON and the bytes of ../shared/videos from memory; the only file
written is the manifest in tmp_path. Backoff and pacing sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import pytest
from fakes.pexels import FakePexels
from shared_paths import VIDEOS

from video_sources import VideoSource
from video_sources.http import DownloadError
from video_sources.pexels import (
    PexelsApiError,
    PexelsClient,
    PexelsKeyError,
    PexelsSource,
    PexelsVideo,
    VideoFile,
    load_api_key,
    pick_file,
)
from video_sources.splits import is_val_id

KEY = "test-key-5ecret-0123456789"
STREET, POSETRACK = "street_short.mp4", "posetrack_short.mp4"
FAST = {"max_frames": 2, "max_side": 64, "min_width": 640}

pytestmark = pytest.mark.skipif(not (VIDEOS / STREET).is_file(), reason=f"no footage: {VIDEOS}")


class _WriteAudit:
    """PEP 578 audit hook recording paths opened for writing while `active`."""

    def __init__(self) -> None:
        self.active, self.writes = False, []

    def __call__(self, event, args):
        if self.active and event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                self.writes.append(os.path.abspath(os.fsdecode(args[0])))


AUDIT = _WriteAudit()
sys.addaudithook(AUDIT)  # hooks cannot be removed; it records only while active


@pytest.fixture
def fake():
    """A fake Pexels with two queries; 'running' spans four pages of two videos."""
    with FakePexels(KEY, VIDEOS) as server:
        server.results["running"] = [
            server.video(101, STREET),
            server.video(102, STREET, hls_only=True),
            server.video(103, STREET, mode="drop"),
            server.video(104, STREET, mode="huge"),
            server.video(105, STREET, mode="text"),
            server.video(106, POSETRACK, mode="redirect"),
            server.video(107, POSETRACK),
        ]
        server.results["yoga"] = [server.video(107, POSETRACK), server.video(108, STREET)]
        yield server


def client_for(fake, sleeps: list[float], **kwargs) -> PexelsClient:
    return PexelsClient(KEY, api_base=fake.base, timeout_s=5, sleep=sleeps.append, **kwargs)


def source_for(fake, sleeps, queries, tmp_path, **kwargs) -> PexelsSource:
    return PexelsSource(queries, client=client_for(fake, sleeps), per_page=2,
                        manifest_path=tmp_path / "manifest.jsonl",
                        max_bytes=1_000_000, **{**FAST, **kwargs})


def video_ids(frames) -> list[str]:
    return list(dict.fromkeys(f.video.id for f in frames))


# --- pick_file ---------------------------------------------------------------------------------


def _video(*files: VideoFile) -> PexelsVideo:
    return PexelsVideo(1, "u", 1920, 1080, 5.0, "n", "", tuple(files))


def _f(fid, quality, width, file_type="video/mp4"):
    height = None if width is None else width * 9 // 16
    return VideoFile(fid, quality, file_type, width, height, 25.0, f"link{fid}")


@pytest.mark.parametrize(
    "files, expected",
    [
        ([_f(1, "sd", 960), _f(2, "hd", 1280), _f(3, "hd", 1920), _f(4, "uhd", 3840)], 3),
        ([_f(1, "sd", 640), _f(2, "sd", 960), _f(3, "uhd", 3840)], 2),  # no hd in range
        ([_f(1, "sd", 320), _f(2, "uhd", 3840), _f(3, "uhd", 2560)], 3),  # smallest larger
        ([_f(1, "hls", None), _f(2, "sd", 960)], 2),  # mp4 over hls
        ([_f(1, "hls", None)], 1),  # hls only when no mp4
        ([_f(1, "sd", 320)], None),  # all too small
        ([_f(1, "sd", 960, "video/webm")], None),  # not mp4
    ],
)
def test_pick_file(files, expected):
    picked = pick_file(_video(*files), min_width=640, max_width=1920)
    assert (picked.id if picked else None) == expected


# --- key ---------------------------------------------------------------------------------------


def test_missing_key_says_how_to_get_one_and_the_offline_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("PEXELS_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    with pytest.raises(PexelsKeyError) as info:
        PexelsClient()
    message = str(info.value)
    for text in ("PEXELS_API_KEY", "https://www.pexels.com/api/", "source=local",
                 "source=synthetic"):
        assert text in message


def test_key_from_dotenv_without_touching_environ(monkeypatch, tmp_path):
    monkeypatch.delenv("PEXELS_API_KEY", raising=False)
    (tmp_path / ".env").write_text(f"PEXELS_API_KEY={KEY}\n")
    assert load_api_key(tmp_path / ".env") == KEY
    assert "PEXELS_API_KEY" not in os.environ


def test_api_base_from_environment_and_key_hidden_in_repr(monkeypatch):
    monkeypatch.setenv("PEXELS_API_URL", "http://mirror.invalid/")
    client = PexelsClient(KEY)
    assert client.api_base == "http://mirror.invalid"
    assert KEY not in repr(client)


# --- client ------------------------------------------------------------------------------------


def test_search_parses_pages_and_sends_the_key_only_as_header(fake):
    client = client_for(fake, [])
    first = client.search("running", page=1, per_page=3)
    last = client.search("running", page=3, per_page=3)
    assert [v.id for v in first.videos] == [101, 102, 103] and first.next_page is not None
    assert [v.id for v in last.videos] == [107] and last.next_page is None
    assert first.total_results == 7 and first.per_page == 3
    v = first.videos[0]
    assert (v.user_name, v.duration, v.video_files[0].fps) == ("Maker 101", 5.0, 25.0)
    assert first.videos[1].video_files[0].width is None  # hls entry
    path, headers = fake.requests[0]
    assert headers["Authorization"] == KEY and KEY not in path
    assert client.quota.limit == 200 and client.quota.remaining == 198


def test_429_without_headers_backs_off_then_succeeds(fake):
    fake.failures[("yoga", 1)] = [429]
    sleeps = []
    page = client_for(fake, sleeps, backoff_s=1.0).search("yoga", per_page=5)
    assert [v.id for v in page.videos] == [107, 108]
    assert len(fake.requests) == 2
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 1.0  # jittered in [d/2, d]


def test_500_retries_with_growing_backoff_then_raises(fake):
    fake.failures[("yoga", 1)] = [500] * 10
    sleeps = []
    client = client_for(fake, sleeps, max_retries=3, backoff_s=1.0, max_backoff_s=3.0)
    with pytest.raises(PexelsApiError) as info:
        client.search("yoga")
    assert info.value.status == 500 and KEY not in str(info.value)
    assert len(fake.requests) == 4  # 1 + max_retries, then no spinning
    assert len(sleeps) == 3  # backoff caps 1, 2, then max_backoff_s=3 (not 4), jittered
    assert all(cap / 2 <= s <= cap for s, cap in zip(sleeps, [1.0, 2.0, 3.0]))


def test_bad_key_is_not_retried_and_not_echoed(fake):
    client = PexelsClient("wrong-key-xyz", api_base=fake.base, sleep=[].append)
    with pytest.raises(PexelsApiError) as info:
        client.popular()
    assert info.value.status == 401 and "wrong-key-xyz" not in str(info.value)
    assert len(fake.requests) == 1


def test_slows_down_before_the_quota_runs_out(fake):
    now = 1_000_000.0
    fake.remaining, fake.reset = 5, int(now) + 60
    sleeps = []
    client = client_for(fake, sleeps, clock=lambda: now)
    client.search("yoga")  # the response reports 4 left of 200, reset in 60 s
    assert sleeps == []
    client.search("yoga")
    assert sleeps == [pytest.approx(60 / 5)]  # 60 s spread over the 4 requests left + 1


def test_download_past_its_time_limit_is_abandoned(fake):
    client = client_for(fake, [])
    link = f"{fake.base}/files/trickle/1/{STREET}"
    with pytest.raises(DownloadError, match="time limit"):
        client.download(link, max_bytes=1_000_000, time_limit_s=0.2)
    assert client.download(f"{fake.base}/files/ok/1/{STREET}", max_bytes=1_000_000,
                           time_limit_s=5) == (VIDEOS / STREET).read_bytes()


# --- source ------------------------------------------------------------------------------------


def test_source_streams_every_good_video_once_and_skips_each_bad_one(fake, tmp_path, caplog,
                                                                   capsys):
    fake.failures[("running", 2)] = [429]
    fake.failures[("yoga", 1)] = [500]
    source = source_for(fake, [], ["running", "yoga"], tmp_path, n=10)
    assert isinstance(source, VideoSource)
    caplog.set_level(logging.DEBUG)
    AUDIT.writes.clear()
    AUDIT.active = True
    try:
        frames = list(source)
    finally:
        AUDIT.active = False

    assert video_ids(frames) == ["pexels-101", "pexels-106", "pexels-107", "pexels-108"]
    first = frames[0]
    assert first.image.dtype.name == "uint8" and max(first.image.shape[:2]) <= 64
    assert (first.video.kind, first.video.licence) == ("pexels", "Pexels License")
    assert first.video.attribution == "Maker 101 (https://www.pexels.com/@maker101)"
    assert source.stats.videos_ok == 4 and source.stats.frames == 8
    skipped = dict(source.stats.skipped)
    assert sorted(int(u.rstrip("/").split("-")[-1]) for u in skipped) == [102, 103, 104, 105]
    for video_id in (102, 103, 104, 105):
        url = f"https://www.pexels.com/video/clip-{video_id}/"
        assert len([r for r in caplog.records if r.levelno == logging.WARNING
                    and url in r.getMessage()]) == 1
    assert "over max_bytes" in skipped["https://www.pexels.com/video/clip-104/"]
    assert len(fake.file_requests(107)) == 1  # same id under two queries: fetched once
    assert len(fake.file_requests(106)) == 2  # the redirect and its target on 'localhost'
    assert all("Authorization" not in h for p, h in fake.requests if p.startswith("/files/"))

    manifest = tmp_path / "manifest.train.jsonl"  # the split goes into the file name
    assert AUDIT.writes and set(AUDIT.writes) == {str(manifest)}
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [e["id"] for e in entries] == [101, 106, 107, 108]
    assert entries[0]["user_name"] == "Maker 101" and entries[0]["width"] == 960
    assert entries[3]["query"] == "yoga" and entries[0]["file_link"].endswith("/101/" + STREET)
    captured = capsys.readouterr()
    for text in (manifest.read_text(), caplog.text, captured.out, captured.err):
        assert KEY not in text


def frame_video_ids(source, count: int) -> list[str]:
    """The first `count` distinct video ids of an endless source, then close it."""
    ids: list[str] = []
    for frame in source:
        if frame.video.id not in ids:
            ids.append(frame.video.id)
        if len(ids) == count:
            break
    source.close()
    return ids


def test_n_new_videos_per_query_and_loop_continues_where_it_stopped(fake, tmp_path):
    once = source_for(fake, [], ["running", "yoga"], tmp_path / "a", n=1)
    assert video_ids(once) == ["pexels-101", "pexels-107"]
    looped = source_for(fake, [], ["running", "yoga"], tmp_path / "b", n=1, loop=True)
    assert frame_video_ids(looped, 4) == ["pexels-101", "pexels-107", "pexels-106", "pexels-108"]


def test_loop_rests_after_a_fruitless_pass_then_searches_again_from_page_1(fake, tmp_path,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="video_sources.pexels")
    source = source_for(fake, [], ["yoga"], tmp_path, n=5, loop=True, rest_s=0.3)
    frames = iter(source)
    assert {next(frames).video.id for _ in range(4)} == {"pexels-107", "pexels-108"}
    fake.results["yoga"].insert(0, fake.video(109, STREET))  # new results appear over time
    start = time.monotonic()
    assert [next(frames).video.id for _ in range(2)] == ["pexels-109"] * 2
    assert time.monotonic() - start >= 0.3  # the exhausted pass waited before searching again
    pages = [p.split("page=")[1].split("&")[0] for p, _ in fake.requests
             if p.startswith("/videos/search")]
    assert pages == ["1", "1"]  # once, then from page 1 again after the rest: no spinning
    assert len([r for r in caplog.records if "no new Pexels videos" in r.getMessage()]) == 1
    source.close()


def test_close_from_another_thread_ends_the_rest_promptly(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="video_sources.pexels")
    source = source_for(fake, [], ["yoga"], tmp_path, n=5, loop=True, rest_s=60)
    consumer = threading.Thread(target=lambda: list(source), daemon=True)
    consumer.start()
    deadline = time.monotonic() + 10
    while not any("no new Pexels" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the source never rested"
        time.sleep(0.02)
    start = time.monotonic()
    source.close()
    consumer.join(timeout=2)
    assert not consumer.is_alive() and time.monotonic() - start < 2
    assert source.stats.videos_ok == 2


def test_consumer_closing_the_generator_stops_the_stream(fake, tmp_path):
    source = source_for(fake, [], ["running", "yoga"], tmp_path, n=10, loop=True, rest_s=60)
    frames = iter(source)
    assert next(frames).video.id == "pexels-101"
    frames.close()
    assert len(fake.file_requests(106)) == 0  # nothing fetched after the close


def test_restart_skips_videos_in_the_manifest(fake, tmp_path):
    first = source_for(fake, [], ["yoga"], tmp_path, n=1)
    assert video_ids(first) == ["pexels-107"]
    again = source_for(fake, [], ["yoga"], tmp_path, n=1)
    assert video_ids(again) == ["pexels-108"]
    assert len(fake.file_requests(107)) == 1


def test_restart_rebuilds_the_same_val_set_and_lists_it_once(fake, tmp_path):
    fake.results["yoga"] = [fake.video(i, STREET) for i in range(200, 208)]
    runs = [video_ids(source_for(fake, [], ["yoga"], tmp_path, n=10, split="val",
                                 val_fraction=0.5, max_frames=1)) for _ in range(2)]
    assert runs[0] and runs[0] == runs[1]
    lines = (tmp_path / "manifest.val.jsonl").read_text().splitlines()
    assert sorted(f"pexels-{json.loads(x)['id']}" for x in lines) == sorted(runs[0])
    assert not (tmp_path / "manifest.train.jsonl").exists()


def test_split_by_video_id(fake, tmp_path):
    fake.results["yoga"] = [fake.video(i, STREET) for i in range(200, 208)]
    ids = {}
    for split in ("train", "val"):
        source = source_for(fake, [], ["yoga"], tmp_path / split, n=10, split=split,
                            val_fraction=0.5, max_frames=1)
        ids[split] = set(video_ids(source))
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    assert ids["train"] | ids["val"] == {f"pexels-{i}" for i in range(200, 208)}
    assert all(is_val_id(i, 0.5) for i in ids["val"])


@pytest.mark.parametrize("options", [{"n": 0}, {"split": "test"}, {"val_fraction": 1.0},
                                     {"per_page": 81}, {"queries": "yoga"}, {"queries": [" "]},
                                     {"rest_s": 0}])
def test_invalid_options_raise(options):
    kwargs = {"queries": ["yoga"], "client": PexelsClient(KEY), **options}
    with pytest.raises(ValueError):
        PexelsSource(**kwargs)
