"""Scene plans: the wire format the LLM fills, how it is read while it streams, and how it becomes the scene.

The wire format is built for constrained decoding on a weak model: five short keys an object, every string and
number bounded by the schema (so the grammar cannot ramble), whole centimetres as integers of at most three
digits, and no field the studio can supply itself (ids, floor height, rotation). A typical object is ~45 tokens
with the SmolLM2 tokenizer, a 4-object plan ~200; the old format took ~95 an object. The stored `SceneObject` and
`Layout` are the studio's own; only this module knows the wire format.

`count` is in the schema only when the user's words name a quantity ("two chairs", "4 stools"): otherwise every
new object is one copy and kept objects keep theirs, whatever the model would have said.

A plan streams (`PlanStream`): each object becomes a card as soon as its name and prompt are complete, and an
object that repeats an earlier name or prompt ends the plan (weak models loop on their last object until the
array is full). The service guarantees the JSON matches the schema; pydantic still validates it, because the
studio must not trust a service it does not own.
"""

from __future__ import annotations

import contextlib
import json
import re
import unicodedata
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import from_json

from studio.workspace import Layout, SceneObject

NAME_MAX_CHARS = 32
PROMPT_MAX_CHARS = 120
SCENE_NAME_MAX_CHARS = 40
MAX_COUNT = 6
MAX_CM = 999  # at most three digits: a bounded number of tokens
SIZE_KEYS, POS_KEYS = ("width", "depth", "height"), ("x", "y")
QUANTITY = re.compile(
    r"\b(\d+|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|pair|couple|several|few|many|"
    r"multiple|dozen|copies|set of)\b",
    re.I,
)
MD_SPECIAL = set("\\`*_[]<>#|")


class Mode(StrEnum):
    """What a message is for; the user sets it in the chat column, nothing guesses it."""

    PLAN = "plan"  # plan a new scene when there is none, else edit the current plan
    ASK = "ask"  # a normal streamed answer


class PlanError(Exception):
    """The LLM's answer was not a usable plan; the message is for the user."""


def md_escape(text: str) -> str:
    """Model- or user-made text shown as Markdown: its own * _ ` [ ] < > # | must not become formatting or HTML."""
    return "".join("\\" + ch if ch in MD_SPECIAL else ch for ch in text)


def clean_text(value: str) -> str:
    """Printable text on one line: control and private-use characters (a weak model emits them) dropped."""
    dropped = ("Cc", "Cf", "Co", "Cs")
    kept = "".join(
        " " if ch.isspace() else ch for ch in value if ch.isspace() or unicodedata.category(ch) not in dropped
    )
    return " ".join(kept.split())


def not_blank(value: str, what: str) -> str:
    """`value` cleaned by `clean_text`; a ValueError naming `what` when nothing is left."""
    value = clean_text(value)
    if not value:
        raise ValueError(f"{what} is blank")
    return value


def asks_for_copies(text: str) -> bool:
    """Whether the user's words name a quantity, so the plan may say how many copies of an object to make."""
    return bool(QUANTITY.search(text))


# --- the wire format --------------------------------------------------------------------------------------------
Cm = Field(ge=-MAX_CM, le=MAX_CM)


class WireObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    count: int | None = Field(None, ge=1, le=MAX_COUNT)  # None: not asked for (see `asks_for_copies`)
    size_cm: tuple[int, int, int] = (100, 100, 100)
    pos_cm: tuple[int, int] = (0, 0)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        return not_blank(v, "object name")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        return not_blank(v, "image prompt")

    @field_validator("size_cm")
    @classmethod
    def _size(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(1 <= n <= MAX_CM for n in v):
            raise ValueError(f"sizes are 1 to {MAX_CM} cm")
        return v

    @field_validator("pos_cm")
    @classmethod
    def _pos(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(-MAX_CM <= n <= MAX_CM for n in v):
            raise ValueError(f"positions are -{MAX_CM} to {MAX_CM} cm")
        return v

    def layout(self, old: Layout | None = None) -> Layout:
        """Metres; the floor height and rotation are not on the wire: a kept object keeps its own, a new one 0."""
        (x, y), (w, d, h) = self.pos_cm, self.size_cm
        z, rotation = (old.position[2], old.rotation_deg) if old else (0.0, 0.0)
        return Layout(position=(x / 100, y / 100, z), size=(w / 100, d / 100, h / 100), rotation_deg=rotation)

    @classmethod
    def of(cls, obj: SceneObject, *, counts: bool) -> WireObject:
        """A stored object as the planner sees it (clamped to the wire's bounds)."""
        (x, y, _), size = obj.layout.position, obj.layout.size
        return cls.model_construct(
            name=obj.name[:NAME_MAX_CHARS],
            prompt=obj.prompt[:PROMPT_MAX_CHARS],
            count=min(max(obj.count, 1), MAX_COUNT) if counts else None,
            size_cm=tuple(min(max(round(v * 100), 1), MAX_CM) for v in size),
            pos_cm=tuple(min(max(round(v * 100), -MAX_CM), MAX_CM) for v in (x, y)),
        )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class WirePlan(BaseModel):
    """A new plan: the scene's name and its objects."""

    model_config = ConfigDict(extra="forbid")

    scene: str = Field(min_length=1, max_length=SCENE_NAME_MAX_CHARS)
    objects: list[WireObject] = Field(min_length=1)

    @field_validator("scene")
    @classmethod
    def _scene_name(cls, v: str) -> str:
        return not_blank(v, "scene name")


class WireEdit(BaseModel):
    """An edit of the current plan: names to remove (the schema allows only current names), objects to add, and
    current objects (by name) with their changed fields. Anything not named stays as it is."""

    model_config = ConfigDict(extra="forbid")

    remove: list[str] = Field(default_factory=list)
    add: list[WireObject] = Field(default_factory=list)
    change: list[WireObject] = Field(default_factory=list)


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _ints(n: int, lo: int, hi: int) -> dict[str, Any]:
    return {"type": "array", "items": _int(lo, hi), "minItems": n, "maxItems": n}


def _strict(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _array(items: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


def _object_schema(counts: bool, names: list[str] | None = None) -> dict[str, Any]:
    name = {"enum": names} if names else {"type": "string", "minLength": 1, "maxLength": NAME_MAX_CHARS}
    return _strict(
        {
            "name": name,
            "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX_CHARS},
            **({"count": _int(1, MAX_COUNT)} if counts else {}),
            "size_cm": _ints(3, 1, MAX_CM),
            "pos_cm": _ints(2, -MAX_CM, MAX_CM),
        }
    )


def plan_schema(max_objects: int, *, counts: bool = False) -> dict[str, Any]:
    """The JSON schema of a new plan, sent with `response_format` (strict: every property required, nothing
    extra). `counts`: the user named a quantity, so objects say how many copies."""
    scene = {"type": "string", "minLength": 1, "maxLength": SCENE_NAME_MAX_CHARS}
    return _strict({"scene": scene, "objects": _array(_object_schema(counts), 1, max_objects)})


def edit_schema(current: list[str], max_objects: int, *, counts: bool = False) -> dict[str, Any]:
    """The JSON schema of an edit of a plan whose objects have the names `current`."""
    names = list(dict.fromkeys(current))
    return _strict(
        {
            "remove": _array({"enum": names}, 0, len(names)),
            "add": _array(_object_schema(counts), 0, max(0, max_objects - len(current))),
            "change": _array(_object_schema(counts, names), 0, len(names)),
        }
    )


def plan_min_tokens() -> int:
    """The answer budget a plan call needs at least: a plan of one object with every string at its longest and
    every number at its widest, counted in bytes (ASCII text never takes more tokens than bytes). An edit's
    shortest answer is shorter. With less room the studio drops the oldest context first, then asks the user to
    shorten the message."""
    longest = {"name": "x" * NAME_MAX_CHARS, "prompt": "x" * PROMPT_MAX_CHARS, "count": MAX_COUNT}
    longest |= {"size_cm": [MAX_CM] * 3, "pos_cm": [-MAX_CM] * 2}
    return len(json.dumps({"scene": "x" * SCENE_NAME_MAX_CHARS, "objects": [longest]}))


def parse_plan(text: str, max_objects: int, model: type[WirePlan | WireEdit] = WirePlan) -> WirePlan | WireEdit:
    """Validate the LLM's JSON; raise `PlanError` with a plain message when it is not a usable plan."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PlanError("The planner's answer was not valid JSON.") from e
    return validate_plan(data, max_objects, model)


def validate_plan(data: Any, max_objects: int, model: type[WirePlan | WireEdit] = WirePlan) -> WirePlan | WireEdit:
    try:
        plan = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"The planner's answer was not a usable plan ({where}: {first['msg']}).") from e
    if isinstance(plan, WirePlan) and len(plan.objects) > max_objects:
        raise PlanError(f"The planner proposed {len(plan.objects)} objects; the limit is {max_objects}.")
    return plan


# --- reading a plan while it streams ----------------------------------------------------------------------------
class PlanStream:
    """A plan's (or an edit's) JSON text as it arrives, re-read after each chunk with pydantic-core's partial JSON
    parser (an unfinished string is left out, so a name or prompt that is present is complete). `found` holds, per
    list of objects, those with a complete name and prompt, up to the first that repeats an earlier name or prompt
    of its list (`repeated`: the answer ends there; what follows that list is dropped)."""

    def __init__(self, max_objects: int, model: type[WirePlan | WireEdit] = WirePlan) -> None:
        self.max_objects = max_objects
        self.model = model
        self.lists = ("objects",) if model is WirePlan else ("add", "change")
        self.text = ""
        self.data: dict[str, Any] = {}
        self.found: dict[str, list[WireObject]] = {key: [] for key in self.lists}
        self.repeated_in: str | None = None  # the list where an object repeated: the answer ends there

    @property
    def repeated(self) -> bool:
        return self.repeated_in is not None

    @property
    def objects(self) -> list[WireObject]:
        return [o for key in self.lists for o in self.found[key]]

    def feed(self, delta: str) -> bool:
        """Add a chunk; True when `found` changed (a new card, or more of the last one's fields)."""
        self.text += delta
        try:
            data = from_json(self.text, allow_partial=True)
        except ValueError:
            return False
        self.data = data if isinstance(data, dict) else {}
        before = dict(self.found)
        for key in self.lists:
            self.found[key], repeated = self._readable(self.data.get(key))
            if repeated:
                self.repeated_in = key
                break
        return self.found != before

    @staticmethod
    def _readable(raw: Any) -> tuple[list[WireObject], bool]:
        """The readable objects of a streamed list, and whether the list repeated itself after them."""
        out: list[WireObject] = []
        for item in raw if isinstance(raw, list) else []:
            obj = _partial_object(item)
            if obj is None:
                break
            if any(
                o.name.casefold() == obj.name.casefold() or o.prompt.casefold() == obj.prompt.casefold() for o in out
            ):
                return out, True
            out.append(obj)
        return out, False

    def plan(self) -> WirePlan | WireEdit:
        """The finished answer: the whole text, or what came before the first repeat when it ended there."""
        if not self.repeated:
            return parse_plan(self.text, self.max_objects, self.model)
        data = {k: v for k, v in self.data.items() if k not in self.lists}
        for key in self.lists[: self.lists.index(str(self.repeated_in)) + 1]:
            data[key] = [o.wire() for o in self.found[key]]
        return validate_plan(data, self.max_objects, self.model)


def _partial_object(item: Any) -> WireObject | None:
    """A streamed object once its name and prompt are complete, its other fields where already valid."""
    if not isinstance(item, dict) or "prompt" not in item:
        return None
    try:
        obj = WireObject(name=item.get("name", ""), prompt=item["prompt"])
    except ValidationError:
        return None
    for key in ("count", "size_cm", "pos_cm"):
        with contextlib.suppress(KeyError, ValidationError):
            obj = WireObject.model_validate({**obj.model_dump(), key: item[key]})
    return obj


# --- prompts ----------------------------------------------------------------------------------------------------
CHAT_SYSTEM = (
    "You are the assistant of a chat-to-3D studio. Users describe a scene; the studio plans its objects, draws a "
    "concept image of each and turns each image into a 3D model. Answer greetings and questions briefly and "
    "helpfully. To plan a scene, the user picks 'Plan the scene' above the message box and describes it, such as "
    "'a cozy reading corner'."
)
FIELDS = (
    "name: the object's short name. prompt: a concept image of the object alone on a white background, with its "
    "material, colour and style, in under 20 words. {count}size_cm: width, depth and height in centimetres. "
    "pos_cm: x and y on the floor in centimetres, the scene's centre at 0, 0."
)
COUNT_FIELD = "count: how many copies, 1 unless the user asks for more. "
# One worked example (measured with SmolLM2-135M: without it the model plans one object or loops; with it, it
# lists the objects the user names).
EXAMPLE_REQUEST = "a home office with a desk, an office chair and a bookshelf"
EXAMPLE_OBJECTS = [
    WireObject(name="Desk", prompt="a wooden writing desk with two drawers, light oak", size_cm=(120, 60, 75)),
    WireObject(
        name="Office chair", prompt="a black mesh office chair on wheels", size_cm=(60, 60, 100), pos_cm=(0, -60)
    ),
    WireObject(
        name="Bookshelf", prompt="a tall white bookshelf full of books", size_cm=(80, 30, 180), pos_cm=(-120, 40)
    ),
]


# The edit's example is another scene, so its names never match the user's (SmolLM2 copies a matching name).
EXAMPLE_EDIT_SCENE = [
    WireObject(name="Bench", prompt="a wooden garden bench with iron armrests", size_cm=(150, 60, 80)),
    WireObject(
        name="Fountain", prompt="a round stone fountain with three tiers", size_cm=(120, 120, 150), pos_cm=(200, 0)
    ),
]
EXAMPLE_EDIT_REQUEST = "remove the fountain and add a bird bath"
EXAMPLE_EDIT = WireEdit(
    remove=["Fountain"],
    add=[
        WireObject(
            name="Bird bath", prompt="a grey stone bird bath on a pedestal", size_cm=(50, 50, 80), pos_cm=(200, 0)
        )
    ],
)


def plan_system(max_objects: int, *, counts: bool) -> str:
    return (
        "You plan 3D scenes for a chat-to-3D studio. Reply with JSON only. scene: a short title. objects: the "
        f"physical objects the user asks for, usually 2 to 5 and never more than {max_objects}, each once (no "
        "floor, walls, sky or lighting). " + FIELDS.format(count=COUNT_FIELD if counts else "")
    )


def edit_system(*, counts: bool) -> str:
    return (
        "You edit the plan of a 3D scene for a chat-to-3D studio. Reply with JSON only. remove: the names of the "
        "objects the user wants gone. add: the new objects the user asks for. change: the objects the user wants "
        "different, with all their fields. Leave a list empty when the user asks for nothing of its kind; "
        "everything else stays as it is. " + FIELDS.format(count=COUNT_FIELD if counts else "")
    )


def plan_json(objects: list[WireObject], scene: str | None = None) -> str:
    body: dict[str, Any] = {"scene": scene} if scene is not None else {}
    return json.dumps({**body, "objects": [o.wire() for o in objects]}, ensure_ascii=False)


def edit_request(current: list[WireObject], request: str) -> str:
    return f"The current plan:\n{plan_json(current)}\n\nChange it as I ask: {request}"


def plan_messages(
    request: str,
    *,
    max_objects: int,
    current: list[SceneObject] | None = None,
    earlier: list[str] | None = None,
) -> list[dict[str, str]]:
    """The planning context: instructions, one worked example, and the request; for an edit also the user's own
    earlier requests for this scene (oldest first, one message each, so the budget drops the oldest first) and the
    current plan. Nothing the assistant said, no error text."""
    counts = asks_for_copies(request)
    copies = {"count": 1 if counts else None}
    if not current:
        example = [o.model_copy(update=copies) for o in EXAMPLE_OBJECTS]
        return [
            {"role": "system", "content": plan_system(max_objects, counts=counts)},
            {"role": "user", "content": "Plan this scene: " + EXAMPLE_REQUEST},
            {"role": "assistant", "content": plan_json(example, "Home office")},
            {"role": "user", "content": "Plan this scene: " + request},
        ]
    scene = [o.model_copy(update=copies) for o in EXAMPLE_EDIT_SCENE]
    answer = EXAMPLE_EDIT.model_copy(update={"add": [o.model_copy(update=copies) for o in EXAMPLE_EDIT.add]})
    return [
        {"role": "system", "content": edit_system(counts=counts)},
        {"role": "user", "content": edit_request(scene, EXAMPLE_EDIT_REQUEST)},
        {"role": "assistant", "content": json.dumps(answer.model_dump(exclude_none=True), ensure_ascii=False)},
        *({"role": "user", "content": "Earlier request for this scene: " + text} for text in earlier or []),
        {"role": "user", "content": edit_request([WireObject.of(o, counts=counts) for o in current], request)},
    ]


# --- applying a plan ---------------------------------------------------------------------------------------------
def apply_edit(current: list[SceneObject], edit: WireEdit, new_ids: list[str]) -> list[SceneObject]:
    """The object list after `edit` (a new plan is an edit of nothing that adds its objects): removed objects leave
    the board (files stay on disk); a changed or re-added object keeps its id, image and model unless its prompt
    changed (then its card waits for a new image); added object i gets `new_ids[i]`, so a card keeps its id from
    the first streamed glimpse to the saved plan."""
    gone = {name.casefold() for name in edit.remove}
    copies = [o.model_copy(deep=True) for o in current]
    out = [o for o in copies if o.name.casefold() not in gone]
    by_name = {o.name.casefold(): o for o in reversed(out)}
    removed = {o.name.casefold(): o for o in reversed(copies) if o.name.casefold() in gone}
    for w in edit.change:
        if w.name.casefold() in by_name:
            _update(by_name[w.name.casefold()], w)
    for w, oid in zip(edit.add, new_ids, strict=False):
        key = w.name.casefold()
        if key in by_name:  # "added" again: a change of the object already there
            _update(by_name[key], w)
            continue
        obj = removed.pop(key, None)  # removed and added back under its name: the same object, changed
        if obj is not None:
            _update(obj, w)
        else:
            obj = SceneObject(id=oid, name=w.name, prompt=w.prompt, count=w.count or 1, layout=w.layout())
        by_name[key] = obj
        out.append(obj)
    return out


def _update(obj: SceneObject, w: WireObject) -> None:
    """Apply what differs from the object as the planner saw it (a copied field changes nothing)."""
    seen = WireObject.of(obj, counts=w.count is not None)
    if w.count is not None and w.count != seen.count:
        obj.count = w.count
    if (w.size_cm, w.pos_cm) != (seen.size_cm, seen.pos_cm):
        obj.layout = w.layout(obj.layout)
    if w.prompt != seen.prompt:
        obj.prompt, obj.state, obj.error, obj.image, obj.variants = w.prompt, "waiting", "", None, []
        obj.model_state, obj.model, obj.job, obj.model_error = "none", None, None, ""


def plan_changes(before: list[SceneObject], after: list[SceneObject]) -> dict[str, list[str]]:
    """Names of the objects an edit added, removed and changed (all empty: nothing changed)."""
    old, new = {o.id: o for o in before}, {o.id: o for o in after}
    fields = {"name", "prompt", "count", "layout"}
    return {
        "added": [o.name for o in after if o.id not in old],
        "removed": [o.name for o in before if o.id not in new],
        "changed": [
            o.name
            for o in after
            if o.id in old and o.model_dump(include=fields) != old[o.id].model_dump(include=fields)
        ],
    }


def _names(names: list[str]) -> str:
    return ", ".join(f"**{md_escape(n)}**" for n in names)


def describe_plan(name: str, objects: list[SceneObject], changes: dict[str, list[str]] | None = None) -> str:
    """The chat reply that accompanies a new plan (`changes` None) or an edit."""
    n = f"{len(objects)} object{'s' if len(objects) != 1 else ''}"
    if changes is None:
        head = f"Here is a plan for **{md_escape(name)}** ({n}):"
    else:
        done = "; ".join(f"{what} {_names(names)}" for what, names in changes.items() if names)
        head = f"Updated the plan for **{md_escape(name)}**: {done}. Now {n}:"
    lines = [head]
    for o in objects:
        w, d, h = o.layout.size
        copies = f" ×{o.count}" if o.count > 1 else ""
        lines.append(f"- **{md_escape(o.name)}**{copies} — {w:g}×{d:g}×{h:g} m")
    lines.append("\nThe cards on the board fill in as each image arrives. Ask me to add, remove or change objects.")
    return "\n".join(lines)


def nothing_changed(request: str) -> str:
    return (
        f"Nothing changed: the planner found nothing to add, remove or change in “{md_escape(request)}”, so the "
        "scene stays as it was. Name the object and what to do with it, e.g. “add a floor lamp” or “remove the rug”."
    )
