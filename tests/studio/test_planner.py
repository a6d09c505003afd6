"""Planner: the wire schema and its bounds, parsing and validation, the streaming reader, the planning context and
how a plan or an edit changes the scene's objects."""

from __future__ import annotations

import json

import pytest

from studio.planner import (
    MAX_CM,
    MAX_COUNT,
    NAME_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SCENE_NAME_MAX_CHARS,
    PlanError,
    PlanStream,
    WireEdit,
    WireObject,
    WirePlan,
    apply_edit,
    asks_for_copies,
    edit_schema,
    md_escape,
    parse_plan,
    plan_changes,
    plan_messages,
    plan_min_tokens,
    plan_schema,
)
from studio.workspace import ImageRef, Layout, SceneObject


def wire_object(**over: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "name": "Armchair",
        "prompt": "a green velvet armchair",
        "size_cm": [80, 90, 100],
        "pos_cm": [50, -20],
    }
    obj.update(over)
    return obj


def plan_text(*objects: dict[str, object], name: str = "Reading corner") -> str:
    return json.dumps({"scene": name, "objects": list(objects) or [wire_object()]})


def existing(oid: str, name: str, prompt: str, **over: object) -> SceneObject:
    obj = SceneObject(id=oid, name=name, prompt=prompt, state="ready", **over)
    obj.image = ImageRef(file=f"images/{oid}-1.png", seed=1)
    return obj


# --- schema and parsing -----------------------------------------------------------------------------------------
def test_parse_plan_converts_centimetres_to_metres_on_the_floor() -> None:
    plan = parse_plan(plan_text(), max_objects=20)
    assert isinstance(plan, WirePlan) and plan.scene == "Reading corner"
    layout = plan.objects[0].layout()
    assert layout.position == (0.5, -0.2, 0.0) and layout.size == (0.8, 0.9, 1.0) and layout.rotation_deg == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json at all", "not valid JSON"),
        ('{"scene": "x"}', "objects"),
        (plan_text(wire_object(name="   ")), "name"),
        (plan_text(wire_object(count=0)), "count"),
        (plan_text(wire_object(size_cm=[0, 1, 1])), "size"),
        (plan_text(wire_object(extra="field")), "extra"),
        (json.dumps({"scene": "x", "objects": []}), "objects"),
    ],
)
def test_parse_plan_rejects_unusable_answers_with_plain_message(text: str, fragment: str) -> None:
    with pytest.raises(PlanError, match="planner") as info:
        parse_plan(text, max_objects=20)
    assert fragment in str(info.value)


def test_parse_plan_refuses_more_objects_than_the_limit() -> None:
    with pytest.raises(PlanError, match="limit is 2"):
        parse_plan(plan_text(*[wire_object(name=f"o{i}") for i in range(3)]), max_objects=2)


def strings_and_ints(schema: dict[str, object]) -> list[dict[str, object]]:
    """Every string and integer leaf of a schema."""
    out = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if node.get("type") in ("string", "integer"):
            out.append(node)
        for key in ("properties",):
            stack.extend((node.get(key) or {}).values())  # type: ignore[union-attr]
        if isinstance(node.get("items"), dict):
            stack.append(node["items"])  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("counts", [False, True])
def test_plan_schema_is_strict_and_bounded(counts: bool) -> None:
    schema = plan_schema(5, counts=counts)
    objects = schema["properties"]["objects"]
    item = objects["items"]
    assert schema["additionalProperties"] is False and item["additionalProperties"] is False
    assert set(item["required"]) == set(item["properties"]) and objects["maxItems"] == 5
    assert ("count" in item["properties"]) is counts
    assert list(schema["properties"]) == ["scene", "objects"]  # the name first, then the cards
    assert list(item["properties"])[:2] == ["name", "prompt"]  # a card can show once these two are complete
    leaves = strings_and_ints(schema)
    assert all("maxLength" in p for p in leaves if p["type"] == "string")
    assert all("maximum" in p and p["maximum"] <= MAX_CM for p in leaves if p["type"] == "integer")
    assert {p["maxLength"] for p in leaves if p["type"] == "string"} == {
        NAME_MAX_CHARS,
        PROMPT_MAX_CHARS,
        SCENE_NAME_MAX_CHARS,
    }


def test_edit_schema_removes_and_changes_only_current_names() -> None:
    schema = edit_schema(["Armchair", "Rug", "Armchair"], 4)
    props = schema["properties"]
    assert list(props) == ["remove", "add", "change"]
    assert props["remove"]["items"] == {"enum": ["Armchair", "Rug"]}
    assert props["change"]["items"]["properties"]["name"] == {"enum": ["Armchair", "Rug"]}
    assert props["add"]["maxItems"] == 1  # no more than the scene's room
    assert "count" not in props["add"]["items"]["properties"]


def test_a_quantity_in_the_request_lets_the_plan_say_how_many() -> None:
    assert asks_for_copies("a dining table with four chairs") and asks_for_copies("add 2 stools")
    assert not asks_for_copies("a cozy reading corner with an armchair")
    assert WireObject.model_validate(wire_object()).count is None  # not asked: one copy
    with pytest.raises(ValueError):
        WireObject.model_validate(wire_object(count=MAX_COUNT + 1))


def test_the_shortest_budget_holds_the_longest_one_object_plan() -> None:
    longest = wire_object(name="x" * NAME_MAX_CHARS, prompt="x" * PROMPT_MAX_CHARS, count=MAX_COUNT)
    longest.update(size_cm=[MAX_CM] * 3, pos_cm=[-MAX_CM] * 2)
    assert len(plan_text(longest, name="x" * SCENE_NAME_MAX_CHARS)) <= plan_min_tokens() < 400


# --- streaming --------------------------------------------------------------------------------------------------
def feed_all(stream: PlanStream, text: str, size: int = 3) -> list[list[str]]:
    """Feed `text` in chunks; the card names after each chunk that changed them."""
    seen = []
    for i in range(0, len(text), size):
        if stream.feed(text[i : i + size]):
            seen.append([o.name for o in stream.objects])
        if stream.repeated:
            break
    return seen


def test_a_streamed_card_appears_once_its_name_and_prompt_are_complete() -> None:
    text = plan_text(wire_object(), wire_object(name="Floor lamp", prompt="a brass floor lamp"))
    stream = PlanStream(20)
    head = text[: text.index('"prompt": "a green') + len('"prompt": "a gre')]
    stream.feed(head)
    assert stream.objects == []  # the prompt is still being written
    stream.feed(text[len(head) : text.index(', "size_cm"')])
    assert [o.name for o in stream.objects] == ["Armchair"]  # long before the plan ends
    stream.feed(text[text.index(', "size_cm"') :])
    assert [o.name for o in stream.objects] == ["Armchair", "Floor lamp"] and not stream.repeated
    assert stream.plan() == parse_plan(text, 20)


def test_an_object_repeating_an_earlier_name_or_prompt_ends_the_plan() -> None:
    looping = plan_text(
        wire_object(),
        wire_object(name="Floor lamp", prompt="a brass floor lamp"),
        wire_object(name="armchair", prompt="another"),
        wire_object(name="Rug", prompt="a rug"),
    )
    stream = PlanStream(20)
    feed_all(stream, looping)
    assert stream.repeated
    plan = stream.plan()
    assert [o.name for o in plan.objects] == ["Armchair", "Floor lamp"] and plan.scene == "Reading corner"
    same_prompt = PlanStream(20)
    feed_all(same_prompt, plan_text(wire_object(), wire_object(name="Chair 2")))
    assert same_prompt.repeated and [o.name for o in same_prompt.plan().objects] == ["Armchair"]


def test_a_streamed_edit_reads_added_and_changed_objects() -> None:
    text = json.dumps({"remove": ["Rug"], "add": [wire_object(name="Lamp", prompt="a lamp")], "change": []})
    stream = PlanStream(20, WireEdit)
    feed_all(stream, text)
    assert [o.name for o in stream.found["add"]] == ["Lamp"]
    edit = stream.plan()
    assert isinstance(edit, WireEdit) and edit.remove == ["Rug"] and [o.name for o in edit.add] == ["Lamp"]


# --- planning context -------------------------------------------------------------------------------------------
def test_a_new_plan_sees_only_the_request() -> None:
    messages = plan_messages("a pirate ship deck", max_objects=5)
    assert messages[-1] == {"role": "user", "content": "Plan this scene: a pirate ship deck"}
    assert messages[0]["role"] == "system" and "5" in messages[0]["content"]


def test_an_edit_sees_earlier_requests_and_the_current_plan_without_ids() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair")
    messages = plan_messages("add a lamp", max_objects=5, current=[chair], earlier=["a reading corner"])
    assert messages[-2] == {"role": "user", "content": "Earlier request for this scene: a reading corner"}
    last = messages[-1]["content"]
    assert "add a lamp" in last and '"name": "Armchair"' in last and chair.id not in last


# --- applying ---------------------------------------------------------------------------------------------------
def test_an_edit_keeps_ids_and_images_adds_and_removes() -> None:
    chair, rug = existing("obj-aaaa0001", "Armchair", "a green armchair"), existing("obj-aaaa0002", "Rug", "a rug")
    edit = WireEdit(remove=["Rug"], add=[WireObject.model_validate(wire_object(name="Floor lamp", prompt="a lamp"))])
    merged = apply_edit([chair, rug], edit, ["obj-new00001"])
    assert [o.name for o in merged] == ["Armchair", "Floor lamp"]
    assert merged[0] == chair  # untouched, image and all
    assert merged[1].id == "obj-new00001" and merged[1].state == "waiting" and merged[1].count == 1
    assert plan_changes([chair, rug], merged) == {"added": ["Floor lamp"], "removed": ["Rug"], "changed": []}


def test_a_changed_prompt_sends_the_card_back_to_waiting_and_keeps_height_and_rotation() -> None:
    layout = Layout(position=(0.5, 0, 0.4), size=(0.8, 0.9, 1.0), rotation_deg=30)
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair", layout=layout, count=3)
    red = WireObject.model_validate(wire_object(prompt="a red leather armchair", pos_cm=[100, 0]))
    (merged,) = apply_edit([chair], WireEdit(change=[red]), [])
    assert merged.id == chair.id and merged.state == "waiting" and merged.image is None
    assert merged.layout.position == (1.0, 0.0, 0.4) and merged.layout.rotation_deg == 30
    assert merged.count == 3  # no quantity asked: copies stay as they were


def test_an_edit_copying_the_plan_changes_nothing() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair " + "very " * 40)  # longer than the wire's
    chair.layout = Layout(position=(0.123, 0, 0), size=(0.804, 0.9, 1.0))  # not whole centimetres
    copied = WireObject.of(chair, counts=False)
    merged = apply_edit([chair], WireEdit(add=[copied], change=[copied]), ["obj-new00001"])
    assert merged == [chair] and not any(plan_changes([chair], merged).values())


def test_removed_and_added_back_under_its_name_is_the_same_card() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair")
    again = WireObject.of(chair, counts=False)
    merged = apply_edit([chair], WireEdit(remove=["Armchair"], add=[again]), ["obj-new00001"])
    assert [o.id for o in merged] == [chair.id] and merged[0].image is not None


def test_control_characters_from_a_weak_model_are_dropped() -> None:
    plan = parse_plan(plan_text(wire_object(name="Arm\x0bchair\u200b", prompt="a\x07 chair\n\tnice")), 20)
    assert plan.objects[0].name == "Arm chair" and plan.objects[0].prompt == "a chair nice"


def test_markdown_in_names_is_shown_literally() -> None:
    assert md_escape("**bold** <b>x</b> `c`") == "\\*\\*bold\\*\\* \\<b\\>x\\</b\\> \\`c\\`"
