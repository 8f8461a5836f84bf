import urllib.error
import urllib.request
from pathlib import Path

import pytest
from vlforge.components.data.loopback import serve_files, url_for


def test_serves_only_named_files_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"PNGDATA")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    with serve_files({"img one.png": tmp_path / "a.png"}) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url_for(base, "img one.png")) as r:
            assert r.read() == b"PNGDATA"
            assert r.headers["Content-Type"] == "image/png"
        for name in ("secret.txt", "../secret.txt", "%2e%2e/secret.txt", ""):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(base + name)
            assert exc.value.code == 404
    with pytest.raises(urllib.error.URLError):  # stopped with the context
        urllib.request.urlopen(url_for(base, "img one.png"), timeout=2)
