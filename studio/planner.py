"""Scene plans: what the LLM is asked for, how its answer is checked, and how an edit updates the current plan.

A plan is requested in ONE `json_schema` call. The wire format uses whole centimetres and degrees because integer
ranges keep the constrained grammar short and bounded (a float lets a weak model ramble digits); the studio
converts to metres. The service guarantees the JSON matches the schema; pydantic still validates it, because the
studio must not trust a service it does not own, and adds the rules a schema cannot say (≤ 30 words, no blank
names after trimming).
"""

from __future__ import annotations

import json
import re
import unicodedata
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.workspace import Layout, SceneObject, new_id

MAX_PROMPT_WORDS = 30
NAME_MAX_CHARS = 40
PROMPT_MAX_CHARS = 220
SCENE_NAME_MAX_CHARS = 60
MAX_COUNT = 12
MAX_CM = 3000


MD_SPECIAL = set("\\`*_[]<>#|")


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


class Intent(StrEnum):
    CHAT = "chat"  # greetings, questions, small talk: a normal streamed answer
    SCENE = "scene"  # a new scene request: a new plan
    EDIT = "edit"  # add / remove / change objects of the current plan


class PlanError(Exception):
    """The LLM's answer was not a usable plan; the message is for the user."""


class WireObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=24)
    name: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    count: int = Field(ge=1, le=MAX_COUNT)
    x_cm: int = Field(ge=-MAX_CM, le=MAX_CM)
    y_cm: int = Field(ge=-MAX_CM, le=MAX_CM)
    z_cm: int = Field(ge=-MAX_CM, le=MAX_CM)
    width_cm: int = Field(ge=1, le=MAX_CM)
    depth_cm: int = Field(ge=1, le=MAX_CM)
    height_cm: int = Field(ge=1, le=MAX_CM)
    rotation_deg: int = Field(ge=0, le=359)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        return not_blank(v, "object name")

    @field_validator("prompt")
    @classmethod
    def _prompt_words(cls, v: str) -> str:
        words = clean_text(v).split()
        if not words:
            raise ValueError("image prompt is blank")
        return " ".join(words[:MAX_PROMPT_WORDS])  # the schema cannot count words; trim rather than refuse

    def layout(self) -> Layout:
        return Layout(
            position=(self.x_cm / 100, self.y_cm / 100, self.z_cm / 100),
            size=(self.width_cm / 100, self.depth_cm / 100, self.height_cm / 100),
            rotation_deg=float(self.rotation_deg),
        )


class WirePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene_name: str = Field(min_length=1, max_length=SCENE_NAME_MAX_CHARS)
    objects: list[WireObject] = Field(min_length=1)

    @field_validator("scene_name")
    @classmethod
    def _scene_name(cls, v: str) -> str:
        return not_blank(v, "scene name")


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def plan_schema(max_objects: int) -> dict[str, Any]:
    """The JSON schema sent with `response_format` (strict: every property required, nothing extra)."""
    obj_props: dict[str, Any] = {
        "id": {"type": "string", "maxLength": 24},
        "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX_CHARS},
        "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX_CHARS},
        "count": _int(1, MAX_COUNT),
        "x_cm": _int(-MAX_CM, MAX_CM),
        "y_cm": _int(-MAX_CM, MAX_CM),
        "z_cm": _int(-MAX_CM, MAX_CM),
        "width_cm": _int(1, MAX_CM),
        "depth_cm": _int(1, MAX_CM),
        "height_cm": _int(1, MAX_CM),
        "rotation_deg": _int(0, 359),
    }
    item = {"type": "object", "properties": obj_props, "required": list(obj_props), "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "scene_name": {"type": "string", "minLength": 1, "maxLength": SCENE_NAME_MAX_CHARS},
            "objects": {"type": "array", "items": item, "minItems": 1, "maxItems": max_objects},
        },
        "required": ["scene_name", "objects"],
        "additionalProperties": False,
    }


def plan_min_tokens() -> int:
    """The answer budget a plan call needs at least: a plan of one object with every string at its longest and
    every number at its widest, counted in bytes (ASCII text never takes more tokens than bytes). With less room
    the studio drops old chat history first, then asks the user to shorten the message."""
    longest = {
        "id": "x" * 24,
        "name": "x" * NAME_MAX_CHARS,
        "prompt": "x" * PROMPT_MAX_CHARS,
        "count": MAX_COUNT,
        **{k: -MAX_CM for k in ("x_cm", "y_cm", "z_cm")},
        **{k: MAX_CM for k in ("width_cm", "depth_cm", "height_cm")},
        "rotation_deg": 359,
    }
    return len(json.dumps({"scene_name": "x" * SCENE_NAME_MAX_CHARS, "objects": [longest]}))


INTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"intent": {"type": "string", "enum": [i.value for i in Intent]}},
    "required": ["intent"],
    "additionalProperties": False,
}


def parse_plan(text: str, max_objects: int) -> WirePlan:
    """Validate the LLM's JSON; raise `PlanError` with a plain message when it is not a usable plan."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PlanError("The planner's answer was not valid JSON.") from e
    try:
        plan = WirePlan.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"The planner's answer was not a usable plan ({where}: {first['msg']}).") from e
    if len(plan.objects) > max_objects:
        raise PlanError(f"The planner proposed {len(plan.objects)} objects; the limit is {max_objects}.")
    return plan


# --- intent ----------------------------------------------------------------------------------------------------
# Clear cases are decided by rules: instant, and independent of how good the model is. Only unclear messages cost
# an LLM call (a tiny json_schema classification).
_GREETING = re.compile(
    r"^\s*(hi|hello|hey|hiya|howdy|yo|thanks|thank you|cheers|good (morning|afternoon|evening)|"
    r"bye|goodbye|ok|okay|cool|great|nice)\b[\s!.,:)]*$",
    re.I,
)
_EDIT = re.compile(
    r"\b(add|remove|delete|drop|replace|change|swap|move|rename|bigger|smaller|larger|taller|"
    r"shorter|more|fewer|less|instead|without|also|another|extra|get rid of)\b",
    re.I,
)
_SCENE = re.compile(
    r"\b(make|create|build|generate|design|model|draw|plan|set up|furnish|give me|i want|"
    r"i'd like|i would like|i need|show me|let's do|scene|room|diorama)\b",
    re.I,
)
_QUESTION = re.compile(
    r"(\?\s*$)|^\s*(what|how|why|who|when|where|which|is|are|do|does|can|could|should|"
    r"would|will|explain|tell me)\b",
    re.I,
)
_NOUN_PHRASE = re.compile(r"^\s*(an?|the|my|some)\s+\S+", re.I)


def classify_intent(message: str, *, has_plan: bool) -> Intent | None:
    """Intent by rules, or None when only the LLM can tell."""
    text = message.strip()
    if not text or _GREETING.match(text):
        return Intent.CHAT
    if has_plan and _EDIT.search(text):
        return Intent.EDIT
    if _SCENE.search(text):
        return Intent.SCENE
    if _QUESTION.search(text):
        return Intent.CHAT
    if _NOUN_PHRASE.match(text) and len(text.split()) <= 12:
        return Intent.SCENE  # "a cozy reading corner", "a pirate ship deck"
    return None


def parse_intent(text: str, *, has_plan: bool) -> Intent:
    try:
        intent = Intent(json.loads(text)["intent"])
    except (ValueError, KeyError, TypeError):
        return Intent.CHAT  # an unreadable classification falls back to the harmless choice
    return Intent.SCENE if intent is Intent.EDIT and not has_plan else intent


# --- prompts ---------------------------------------------------------------------------------------------------
CHAT_SYSTEM = (
    "You are the assistant of a chat-to-3D studio. Users describe a scene; the studio plans its "
    "objects, draws a concept image of each and turns each image into a 3D model. Answer greetings "
    "and questions briefly and helpfully. To start, a user can describe a scene such as "
    "'a cozy reading corner'."
)

INTENT_SYSTEM = (
    "Classify the user's last message for a chat-to-3D studio. 'scene': they describe or ask for a "
    "new scene or set of objects. 'edit': they want to add, remove or change objects of the current "
    "plan. 'chat': greetings, questions, anything else."
)


def plan_system(max_objects: int) -> str:
    return (
        "You plan 3D scenes for a chat-to-3D studio. Reply with JSON only, matching the schema. "
        f"List between 1 and {max_objects} distinct physical objects that make up the scene (no floors, walls, "
        "sky or lighting). For each: a short name; a prompt of at most 30 words for a concept image showing the "
        "object alone, whole, centred, on a plain white background, describing material, colour and style; "
        "count (how many copies); a rough layout in centimetres with x to the right, y forward, z up, z_cm = 0 "
        "on the floor, the object's width, depth and height, and its rotation about the vertical axis in "
        'degrees. Use id "" for new objects and keep the id of every object you keep from the current plan.'
    )


def current_plan_json(objects: list[SceneObject], scene_name: str) -> str:
    rows = []
    for o in objects:
        (x, y, z), (w, d, h) = o.layout.position, o.layout.size
        rows.append(
            {
                "id": o.id,
                "name": o.name,
                "prompt": o.prompt,
                "count": o.count,
                "x_cm": round(x * 100),
                "y_cm": round(y * 100),
                "z_cm": round(z * 100),
                "width_cm": round(w * 100),
                "depth_cm": round(d * 100),
                "height_cm": round(h * 100),
                "rotation_deg": round(o.layout.rotation_deg) % 360,
            }
        )
    return json.dumps({"scene_name": scene_name, "objects": rows}, ensure_ascii=False)


def plan_messages(
    history: list[dict[str, str]],
    request: str,
    *,
    max_objects: int,
    current: list[SceneObject] | None = None,
    scene_name: str = "",
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": plan_system(max_objects)}, *history]
    if current:
        messages.append(
            {
                "role": "user",
                "content": "The current plan is:\n"
                + current_plan_json(current, scene_name)
                + "\n\nUpdate it as I ask, keeping everything else: "
                + request,
            }
        )
    else:
        messages.append({"role": "user", "content": "Plan this scene: " + request})
    return messages


# --- applying a plan -------------------------------------------------------------------------------------------
def merge_plan(current: list[SceneObject], plan: WirePlan) -> list[SceneObject]:
    """The new object list: kept objects keep their id, image and model; a changed prompt sends the card back to
    waiting (its old image stays on disk); objects the plan dropped leave the board (files stay on disk)."""
    by_id = {o.id: o for o in current}
    by_name = {o.name.casefold(): o for o in current}
    out: list[SceneObject] = []
    used: set[str] = set()
    for w in plan.objects:
        old = by_id.get(w.id) or by_name.get(w.name.casefold())
        if old is not None and old.id not in used:
            used.add(old.id)
            obj = old.model_copy(deep=True)
            obj.name, obj.count, obj.layout = w.name, w.count, w.layout()
            if w.prompt != old.prompt:
                obj.prompt, obj.state, obj.error, obj.image, obj.variants = w.prompt, "waiting", "", None, []
                obj.model_state, obj.model, obj.job, obj.model_error = "none", None, None, ""
            out.append(obj)
        else:
            out.append(SceneObject(id=new_id("obj-"), name=w.name, prompt=w.prompt, count=w.count, layout=w.layout()))
    return out


def describe_plan(name: str, objects: list[SceneObject], *, edited: bool) -> str:
    """The chat reply that accompanies a new or updated plan."""
    head = f"Updated the plan for **{md_escape(name)}**" if edited else f"Here is a plan for **{md_escape(name)}**"
    lines = [f"{head} ({len(objects)} object{'s' if len(objects) != 1 else ''}):"]
    for o in objects:
        w, d, h = o.layout.size
        copies = f" ×{o.count}" if o.count > 1 else ""
        lines.append(f"- **{md_escape(o.name)}**{copies} — {w:g}×{d:g}×{h:g} m")
    lines.append("\nThe cards on the board fill in as each image arrives. Ask me to add, remove or change objects.")
    return "\n".join(lines)
