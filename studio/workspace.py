"""Scenes on disk (DESIGN §7): `scenes/<scene-id>/scene.json`, `images/`, `models/`, `exports/`.

The file is the source of truth: every change loads the scene fresh under a per-scene lock, applies one small
edit and writes it back atomically (temp file + rename), so overlapping clicks and several tabs never lose each
other's work, and a crash never leaves a half-written file. File names come from ids we generate, never from
user text. Nothing here deletes a file: removing an object only drops it from the plan. Files are written readable
by the user's other tools (a viewer, Blender, a file manager), as any file the user saved would be.

A save that fails (a full or read-only disk, a file where a folder should be) raises `StorageError`, whose message
says what and where in words; the file it was to replace is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from servicekit.storage import cannot_save, check_storage

SCHEMA_VERSION = 1
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
FILE_MODE = 0o644  # what the process umask leaves of it; mkstemp alone would leave 0600 (owner only)

CardState = Literal["waiting", "generating", "ready", "filtered", "failed"]
ModelState = Literal["none", "queued", "running", "ready", "failed", "cancelled", "filtered"]


class Layout(BaseModel):
    """Rough placement in metres: x right, y forward, z up (Blender's axes); rotation about z in degrees."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation_deg: float = 0.0


class ImageRef(BaseModel):
    file: str  # relative to the scene folder
    seed: int
    source: Literal["generated", "upload"] = "generated"


class JobProgress(BaseModel):
    id: str
    status: str = "queued"
    stage: str = ""
    progress: float = 0.0
    queue_position: int | None = None


class ModelRef(BaseModel):
    file: str
    seed: int | None = None
    backend: str = ""
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)


class SceneObject(BaseModel):
    id: str
    name: str
    prompt: str
    count: int = 1
    layout: Layout = Field(default_factory=Layout)
    state: CardState = "waiting"
    error: str = ""
    image: ImageRef | None = None
    variants: list[ImageRef] = Field(default_factory=list)
    model_state: ModelState = "none"
    model_error: str = ""
    job: JobProgress | None = None
    model: ModelRef | None = None


class ChatRecord(BaseModel):
    """One message of the scene's chat as scene.json keeps it (the LLM's wire message is another type). `kind`
    says which mode it was sent in: a "plan" request (a new scene or an edit) and its summary, or a "chat" question
    and its answer. Only the user's "plan" messages go back to the planner; records written before kinds existed
    count as "chat", so nothing of unknown origin reaches a plan."""

    role: Literal["user", "assistant"]
    content: str
    kind: Literal["plan", "chat"] = Field("chat", exclude_if=lambda kind: kind == "chat")  # old files save the same


class Scene(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str
    name: str = "Untitled scene"
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    request: str = ""
    objects: list[SceneObject] = Field(default_factory=list)
    chat: list[ChatRecord] = Field(default_factory=list)

    def find(self, object_id: str) -> SceneObject | None:
        return next((o for o in self.objects if o.id == object_id), None)

    @property
    def empty(self) -> bool:
        """Nothing worth keeping yet: no objects and no chat (a fresh start that was never used)."""
        return not self.objects and not self.chat


class SceneSummary(BaseModel):
    id: str
    name: str
    updated: float
    objects: int


def new_id(prefix: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix}{stamp}-{secrets.token_hex(3)}" if not prefix else f"{prefix}{secrets.token_hex(4)}"


def check_id(value: str) -> str:
    """Ids become path parts; only our own shape is accepted, so `..`, `/` or user text can never escape."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError(f"not a valid id: {value!r}")
    return value


def process_umask() -> int:
    """The umask, read without changing it where Linux shows it (changing it, even briefly, races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StorageError(Exception):
    """Something could not be saved under DATA_DIR; the message says what and where, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def could_not_save(reason: str) -> StorageError:
    """servicekit's reason (`cannot save: DATA_DIR /x is read-only (…)`) as the sentence the studio shows."""
    return StorageError(f"Could not {reason.removeprefix('cannot ')}.")


def save_failed(folder: Path, err: OSError) -> StorageError:
    """`err`, raised while saving into `folder`, in words. A file standing where `folder` or one of its parents
    should be is named itself: that file is what the user has to move."""
    in_the_way = next((p for p in (folder, *folder.parents) if p.is_file()), None)
    return could_not_save(cannot_save(f"DATA_DIR {in_the_way or folder}", err))


def atomic_write(path: Path, data: bytes) -> None:
    """`data` as the whole new content of `path`, or nothing: a failed save raises StorageError and leaves the old
    file, and no temp file or new empty folder, behind."""
    new_folder = not path.parent.is_dir()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_then_rename(path, data)
    except OSError as e:
        if new_folder:
            with contextlib.suppress(OSError):  # rmdir removes only an empty folder: never anything saved in it
                path.parent.rmdir()
        raise save_failed(path.parent, e) from e


def _write_then_rename(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the save's own error is the one to report
            os.unlink(tmp)
        raise


class Workspace:
    """All scenes under `data_dir/scenes`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = (Path(data_dir) / "scenes").resolve()
        self._locks: dict[str, asyncio.Lock] = {}

    def scene_dir(self, scene_id: str) -> Path:
        return self.root / check_id(scene_id)

    def path(self, scene_id: str, relative: str) -> Path:
        """Absolute path of a file recorded in scene.json, refusing anything outside the scene folder."""
        base = self.scene_dir(scene_id)
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            raise ValueError(f"path escapes the scene folder: {relative!r}")
        return target

    def check_writable(self, scene_id: str, folder: str) -> None:
        """Raise StorageError unless the scene's `folder` takes a new file now. An action that writes files calls
        this before it changes the scene, so a full or read-only disk stops it with the scene as it was."""
        # Any free space will do: the studio's files are small, and a write that still fails is reported as well.
        problem = check_storage(self.path(scene_id, folder), min_free_mb=0)
        if problem:
            raise could_not_save(problem)

    def exists(self, scene_id: str | None) -> bool:
        try:
            return bool(scene_id) and (self.scene_dir(str(scene_id)) / "scene.json").is_file()
        except ValueError:
            return False

    def create(self) -> Scene:
        scene = Scene(id=new_id())
        self.save(scene)
        return scene

    def load(self, scene_id: str) -> Scene:
        raw = (self.scene_dir(scene_id) / "scene.json").read_bytes()
        scene = Scene.model_validate_json(raw)
        if scene.schema_version > SCHEMA_VERSION:
            raise ValueError(f"scene {scene_id} was written by a newer studio (schema {scene.schema_version})")
        return scene

    def save(self, scene: Scene) -> None:
        scene.updated = time.time()
        atomic_write(self.scene_dir(scene.id) / "scene.json", scene.model_dump_json(indent=2).encode())

    def list(self) -> list[SceneSummary]:
        out = []
        for entry in self.root.glob("*/scene.json") if self.root.is_dir() else []:
            try:
                s = Scene.model_validate_json(entry.read_bytes())
            except (ValidationError, OSError, ValueError):
                continue  # a foreign or damaged folder is skipped, never touched
            if not s.empty:  # a fresh start nobody used is not a scene to reopen
                out.append(SceneSummary(id=s.id, name=s.name, updated=s.updated, objects=len(s.objects)))
        return sorted(out, key=lambda s: s.updated, reverse=True)

    def write_image(self, scene_id: str, object_id: str, seed: int, png: bytes) -> str:
        rel = f"images/{check_id(object_id)}-{int(seed)}.png"
        atomic_write(self.path(scene_id, rel), png)
        return rel

    def write_model(self, scene_id: str, object_id: str, seed: int, data: bytes, ext: str = "glb") -> str:
        rel = f"models/{check_id(object_id)}-{int(seed)}.{'stl' if ext == 'stl' else 'glb'}"
        atomic_write(self.path(scene_id, rel), data)
        return rel

    @contextlib.asynccontextmanager
    async def edit(self, scene_id: str) -> AsyncIterator[Scene]:
        """Load fresh, let the caller change it, save on success; an exception saves nothing."""
        lock = self._locks.setdefault(check_id(scene_id), asyncio.Lock())
        async with lock:
            scene = self.load(scene_id)
            yield scene
            self.save(scene)

    def reopen(self, scene_id: str) -> Scene:
        """Load for display after a refresh or from "My scenes": work that was in flight when the page or the
        process went away is shown as interrupted (with retry) instead of spinning forever."""
        scene = self.load(scene_id)
        changed = False
        for obj in scene.objects:
            if obj.state == "generating" and obj.image is not None:  # a redraw: the card keeps the image it had
                obj.state, obj.error, changed = "ready", "The new image was interrupted.", True
            elif obj.state == "generating":
                obj.state, obj.error, changed = "failed", "Interrupted; press Retry.", True
            if obj.model_state in ("queued", "running"):
                obj.model_state, obj.model_error, obj.job = "failed", "Interrupted; press Make 3D again.", None
                changed = True
        if changed:
            # Only what the page shows is corrected here, and a reopen corrects it again: a disk that cannot take
            # it must not keep the user from seeing the scene (the next change says why it cannot be saved).
            with contextlib.suppress(StorageError):
                self.save(scene)
        return scene
