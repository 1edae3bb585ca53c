"""Pexels videos streamed into memory, one room per responsibility:

- `wire`: the API's video, file and page objects, and the choice of the file to download;
- `key`: the API key, from the environment or `.env` only;
- `client`: `PexelsClient`, the HTTP calls with pacing, retries and the key kept to API hosts;
- `source`: `PexelsSource`, the `VideoSource` that searches, downloads, decodes and keeps the
  manifest.

The public names are re-exported here, so `video_sources.pexels.PexelsSource` (a config's
`_target_`) keeps working.
"""

from video_sources.pexels.client import DEFAULT_API_BASE, PexelsApiError, PexelsClient, Quota
from video_sources.pexels.key import KEY_ENV, PexelsKeyError, load_api_key
from video_sources.pexels.source import (
    ID_PREFIX,
    LICENCE,
    PexelsSource,
    read_manifest_ids,
    split_manifest,
)
from video_sources.pexels.wire import (
    MAX_PER_PAGE,
    PexelsVideo,
    VideoFile,
    VideoPage,
    parse_page,
    pick_file,
)

__all__ = [
    "DEFAULT_API_BASE", "ID_PREFIX", "KEY_ENV", "LICENCE", "MAX_PER_PAGE", "PexelsApiError",
    "PexelsClient", "PexelsKeyError", "PexelsSource", "PexelsVideo", "Quota", "VideoFile",
    "VideoPage", "load_api_key", "parse_page", "pick_file", "read_manifest_ids",
    "split_manifest",
]
