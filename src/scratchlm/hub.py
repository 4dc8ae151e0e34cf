"""The Hugging Face Hub: `scratchlm push` and `pull`, `init_from: hub://ID@REVISION`, and the upload of
each new checkpoint while training, in the background.

The token is huggingface_hub's to find (HF_TOKEN, or the cache `hf auth login` writes): scratchlm only
asks whether there is one, so it never holds, prints or writes it.
"""

import threading
import time
from pathlib import Path

from .errors import ScratchError

HUB_PREFIX = "hub://"  # init_from: hub://owner/name@revision


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """'owner/name@revision' -> ('owner/name', 'revision'); the revision is optional."""
    repo_id, _, revision = spec.partition("@")
    owner, _, name = repo_id.partition("/")
    if not owner or not name or "/" in name or (revision == "" and "@" in spec):
        raise ScratchError(f"'{spec}' is not a Hub repository (owner/name or owner/name@revision)")
    return repo_id, revision or None


def _hub_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the network or the Hub fails: HTTP errors are OSErrors,
    connection failures httpx2's, a failed LFS upload a RuntimeError, a malformed answer a ValueError."""
    import httpx2

    return OSError, RuntimeError, ValueError, httpx2.HTTPError


def require_token(what: str) -> None:
    from huggingface_hub import get_token

    if get_token() is None:
        raise ScratchError(f"{what} needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")


def check_write_access(repo_id: str, private: bool) -> None:
    """At start-up: create the repo (or find it). A refused token is an error now, before training; the
    Hub being unreachable is not (uploads retry), so that only prints a warning."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    require_token(f"uploading checkpoints to {repo_id}")
    try:
        HfApi().create_repo(repo_id, private=private, exist_ok=True)
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code in (401, 403):
            status = err.response.status_code
            raise ScratchError(f"the Hub refused access to {repo_id} (HTTP {status}): {err}") from None
        print(f"warning: the Hub did not answer for {repo_id} ({err}); uploads will retry")
    except _hub_errors() as err:
        print(f"warning: the Hub did not answer for {repo_id} ({type(err).__name__}: {err}); uploads will retry")


def push(folder: str | Path, repo_id: str, revision: str | None = None, private: bool = False) -> str:
    """Upload a directory as one commit to a branch (created from main if new); returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ScratchError(f"{folder} is not a directory with files to push")
    require_token(f"pushing to {repo_id}")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, commit_message=f"scratchlm: {folder.name}"
        )
    except _hub_errors() as err:
        where = f"{repo_id}@{revision or 'main'}"
        raise ScratchError(f"push of {folder} to {where} failed: {type(err).__name__}: {err}") from None
    return commit.commit_url


def pull(spec: str, out: str | Path | None = None) -> Path:
    """Download owner/name[@revision] into `out`, or into the Hugging Face cache; returns the folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision = parse_repo_spec(spec)
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_dir=out))
    except RevisionNotFoundError:
        raise ScratchError(f"{repo_id} has no revision '{revision}' on the Hub") from None
    except RepositoryNotFoundError:
        raise ScratchError(
            f"no repository {repo_id} on the Hub, or no access to it (a private one needs HF_TOKEN or `hf auth login`)"
        ) from None
    except _hub_errors() as err:
        raise ScratchError(f"pull of {spec} failed: {type(err).__name__}: {err}") from None


def resolve_model_source(source: str) -> str:
    """A local directory as it is; hub://owner/name@revision downloaded to the cache first."""
    return str(pull(source.removeprefix(HUB_PREFIX))) if source.startswith(HUB_PREFIX) else source


class CheckpointUploader:
    """Uploads checkpoints to the Hub from a thread, so training never waits for the network.

    Each checkpoint goes to its own branch, named like its folder (`pull ID@step_00001000` gets it
    back); the final export goes to main. A failed upload is retried after `retry_seconds`, doubling,
    `attempts` times in all. When checkpoints arrive faster than they upload, only the newest waiting
    one is uploaded next: a backup is worth its newest state.
    """

    def __init__(self, repo_id: str, private: bool, retry_seconds: float, say, attempts: int = 5):
        self.repo_id = repo_id
        self.private = private
        self.retry_seconds = retry_seconds
        self.attempts = attempts
        self.say = say
        self.waiting: list[tuple[Path, str]] = []
        self.uploading: Path | None = None
        self.closing = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="hub-upload", daemon=True)
        self.thread.start()

    def submit(self, folder: Path, revision: str) -> None:
        with self.changed:
            if revision != "main":  # a newer checkpoint replaces one still waiting
                self.waiting = [(f, r) for f, r in self.waiting if r == "main"]
            self.waiting.append((Path(folder), revision))
            self.changed.notify_all()

    def busy_folders(self) -> set[Path]:
        """The folder being uploaded: not to be deleted under the upload."""
        with self.changed:
            return {self.uploading} if self.uploading else set()

    def finish(self) -> None:
        """Wait for the uploads still waiting (at the end of training)."""
        with self.changed:
            self.closing = True
            if self.waiting or self.uploading:
                self.say(f"hub: waiting for {len(self.waiting) + bool(self.uploading)} upload(s) to {self.repo_id}")
            self.changed.notify_all()
        self.thread.join()

    def _work(self) -> None:
        while True:
            with self.changed:
                while not self.waiting and not self.closing:
                    self.changed.wait()
                if not self.waiting:
                    return
                self.uploading, revision = self.waiting.pop(0)
            self._upload(self.uploading, revision)
            with self.changed:
                self.uploading = None

    def _upload(self, folder: Path, revision: str) -> None:
        for attempt in range(1, self.attempts + 1):
            if not folder.is_dir():
                self.say(f"hub: {folder} was deleted before its upload; skipped")
                return
            start = time.perf_counter()
            try:
                push(folder, self.repo_id, revision, self.private)
            except Exception as err:  # nothing the network does may stop training
                if attempt == self.attempts:
                    self.say(
                        f"hub: giving up on {folder.name} after {attempt} attempts ({err}); it is on local disk: "
                        f"scratchlm push {folder} --repo-id {self.repo_id} --revision {revision}"
                    )
                    return
                delay = self.retry_seconds * 2 ** (attempt - 1)
                retry = f"retry {attempt}/{self.attempts - 1} in {delay:g}s"
                self.say(f"hub: upload of {folder.name} failed ({err}); {retry}")
                time.sleep(delay)
                continue
            self.say(f"hub: {folder.name} -> {self.repo_id}@{revision} in {time.perf_counter() - start:.1f}s")
            return
