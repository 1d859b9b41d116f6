"""Model cards and Hub uploads for the release folders.

    render_card(fields)                        model_card.md (a string.Template) with the run's numbers
    push_folder(folder, "org/name")            create_repo + one commit with the folder's files
    push(Upload(repo, files), dry_run=True)    the same plan, listed (files and sizes), no network

A card field left out renders as "n/a", so a card never shows a raw `$placeholder`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

log = logging.getLogger("training.publish")

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
MISSING = "n/a"
CARD_DEFAULTS = {
    "base_model": "google/long-t5-tglobal-base",
    "repo_id": "ORG/NAME",
    "onnx_repo_id": "ORG/NAME-onnx",
    "variant": "PyTorch",
    "smoke_note": "",
    "date": time.strftime("%Y-%m-%d"),
}
# Uploads leave these out: staging leftovers and hidden files (the pipeline's own bookkeeping).
IGNORE_PATTERNS = [".*", "**/.*", "*.staging/**"]
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def render_card(fields: dict, template: str | Path = CARD_TEMPLATE) -> str:
    """The card ``template`` with ``fields`` filled in; missing or None values become "n/a"."""
    text = Path(template).read_text(encoding="utf-8")
    card = Template(text)
    values = {name: MISSING for name in card.get_identifiers()}
    values.update(CARD_DEFAULTS)
    values.update({k: (MISSING if v is None else str(v)) for k, v in fields.items()})
    return card.substitute(values)


@dataclass(frozen=True)
class Upload:
    """One repo's planned (or done) upload: local file -> path in the repo."""

    repo_id: str
    files: list[tuple[Path, str]]  # (local file, path in the repo)
    url: str | None = None  # the commit's URL after a real upload

    def listing(self) -> str:
        sizes = [(name, local.stat().st_size) for local, name in self.files]
        total = sum(size for _, size in sizes)
        rows = [f"  {size / 1e6:10.2f} MB  {name}" for name, size in sizes]
        return "\n".join([f"{self.repo_id}: {len(sizes)} files, {total / 1e6:.2f} MB", *rows])


def folder_files(
    folder: str | Path, prefix: str = "", leave_out: list[str] | None = None
) -> list[tuple[Path, str]]:
    """The files of ``folder`` an upload sends (IGNORE_PATTERNS and ``leave_out`` patterns left out), as
    (local, path in repo)."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: nothing to upload")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [
        (folder / path, prefix + path)
        for path in filter_repo_objects(paths, ignore_patterns=[*IGNORE_PATTERNS, *(leave_out or [])])
    ]


def push(
    upload: Upload,
    *,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload from training.pipeline",
) -> Upload:
    """Create the model repo if needed and upload the files in one commit; ``dry_run``: no network.

    One create_commit rather than upload_folder: the ONNX repo gets the fp32 and the int8 files
    (``*_quantized.onnx``) in a single commit, so a reader never sees one without the other.
    """
    if not REPO_ID.match(upload.repo_id):
        raise ValueError(f"{upload.repo_id!r} is not a Hub repo id: expected ORG/NAME")
    if "README.md" not in {name for _, name in upload.files}:
        raise FileNotFoundError(f"the upload to {upload.repo_id} has no README.md model card")
    if dry_run:
        return upload
    from huggingface_hub import CommitOperationAdd, HfApi

    start = time.perf_counter()
    api = HfApi(token=token)
    api.create_repo(upload.repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id=upload.repo_id,
        repo_type="model",
        operations=[
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=local) for local, name in upload.files
        ],
        commit_message=commit_message,
    )
    log.info(
        "hub: uploaded %d files to %s in %.1f s",
        len(upload.files),
        upload.repo_id,
        time.perf_counter() - start,
    )
    return Upload(upload.repo_id, upload.files, url=commit.commit_url)


def push_folder(folder: str | Path, repo_id: str, **options) -> Upload:
    """Upload one folder as it is (see push for the options)."""
    return push(Upload(repo_id, folder_files(folder)), **options)
