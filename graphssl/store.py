"""The tracking store before and around graphssl's writes: is it reachable (a short probe), does its local
folder exist, one set-up at a time on a fresh SQLite file (a lock), and which errors are refusals, not outages."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


class TrackingError(Exception):
    """The tracking store cannot be reached or written."""


PROBE_TIMEOUT_S = 5.0  # the first request to a tracking server: an answer within seconds, or a clear error
# Error codes of a request the store answered and refused (a bad key, a changed parameter, a deleted run):
# sending it again will not help, unlike a store that is away.
REFUSED_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE",
                 "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT"}


def is_refusal(error: BaseException) -> bool:
    """Did the store answer and refuse the request (rather than not answer)?"""
    if type(error).__name__ == "IntegrityError":  # sqlalchemy, from a SQLite or SQL store
        return True
    return getattr(error, "error_code", None) in REFUSED_CODES


def probe_server(uri: str, timeout: float | None = None) -> None:
    """One GET of the server's /health with a short timeout, before MLflow's client (whose requests
    wait MLFLOW_HTTP_REQUEST_TIMEOUT and retry): any HTTP answer will do, silence or a refusal is an error."""
    import socket
    import urllib.error
    import urllib.request

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            answer.read(64)
    except urllib.error.HTTPError:
        return  # it answered (a proxy's 404, a login page): MLflow's own requests will say more
    except (socket.timeout, TimeoutError):
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: it accepted the connection but did not "
                            f"answer within {timeout:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise TrackingError(f"cannot use the MLflow tracking store {uri}: it did not answer within {timeout:g} s") from None
        refused = isinstance(e.reason, ConnectionRefusedError)
        reason = "connection refused: is the tracking server running?" if refused else str(e.reason)
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {reason}") from None
    except OSError as e:
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {e}") from None


def local_store_path(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) of a local tracking URI; None for servers and the like."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):].split("?", 1)[0]
        return Path(rest) if rest else None
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return Path(uri) if ":" not in uri else None  # a plain folder is MLflow's file store


def check_local_store(uri: str) -> Path | None:
    """A local store's folder must exist: a mistyped path is an error, not a new store somewhere."""
    path = local_store_path(uri)
    if path is None:
        return None
    folder = path.expanduser().absolute().parent
    if not folder.is_dir():
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: the folder {folder} does not exist "
                            "(create it, or point --tracking-uri elsewhere)")
    return folder


@contextmanager
def setting_up(folder: Path | None):
    """Hold an exclusive lock on the store's folder while the store is set up, so that two runs starting
    together on a fresh SQLite file do not both create (migrate) its tables."""
    if folder is None:
        yield
        return
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here (Windows, some network file systems): no lock
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
