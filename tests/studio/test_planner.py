"""Planner: schema, parsing and validation of the LLM's plan, intent rules, merging an edit into a plan."""

from __future__ import annotations

import json

import pytest

from studio.planner import (
    Intent,
    PlanError,
    classify_intent,
    current_plan_json,
    merge_plan,
    parse_intent,
    parse_plan,
    plan_messages,
    plan_schema,
)
from studio.workspace import ImageRef, SceneObject


def wire_object(**over: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "id": "",
        "name": "Armchair",
        "prompt": "a green velvet armchair, white background",
        "count": 1,
        "x_cm": 50,
        "y_cm": -20,
        "z_cm": 0,
        "width_cm": 80,
        "depth_cm": 90,
        "height_cm": 100,
        "rotation_deg": 45,
    }
    obj.update(over)
    return obj


def plan_text(*objects: dict[str, object], name: str = "Reading corner") -> str:
    return json.dumps({"scene_name": name, "objects": list(objects) or [wire_object()]})


def test_parse_plan_converts_centimetres_to_metres() -> None:
    plan = parse_plan(plan_text(), max_objects=20)
    layout = plan.objects[0].layout()
    assert plan.scene_name == "Reading corner"
    assert layout.position == (0.5, -0.2, 0.0)
    assert layout.size == (0.8, 0.9, 1.0)
    assert layout.rotation_deg == 45


def test_parse_plan_trims_long_prompt_to_30_words() -> None:
    long_prompt = " ".join(f"w{i}" for i in range(45))
    plan = parse_plan(plan_text(wire_object(prompt=long_prompt)), max_objects=20)
    assert len(plan.objects[0].prompt.split()) == 30


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json at all", "not valid JSON"),
        ('{"scene_name": "x"}', "objects"),
        (plan_text(wire_object(name="   ")), "name"),
        (plan_text(wire_object(count=0)), "count"),
        (plan_text(wire_object(extra="field")), "extra"),
        (json.dumps({"scene_name": "x", "objects": []}), "objects"),
    ],
)
def test_parse_plan_rejects_unusable_answers_with_plain_message(text: str, fragment: str) -> None:
    with pytest.raises(PlanError, match="planner") as info:
        parse_plan(text, max_objects=20)
    assert fragment in str(info.value)


def test_parse_plan_refuses_more_objects_than_the_limit() -> None:
    with pytest.raises(PlanError, match="limit is 2"):
        parse_plan(plan_text(*[wire_object(name=f"o{i}") for i in range(3)]), max_objects=2)


def test_plan_schema_is_strict_and_bounded() -> None:
    schema = plan_schema(5)
    item = schema["properties"]["objects"]["items"]
    assert schema["additionalProperties"] is False and item["additionalProperties"] is False
    assert set(item["required"]) == set(item["properties"])
    assert schema["properties"]["objects"]["maxItems"] == 5
    assert all("maximum" in p for p in item["properties"].values() if p["type"] == "integer")
    assert all("maxLength" in p for p in item["properties"].values() if p["type"] == "string")


@pytest.mark.parametrize(
    ("message", "has_plan", "intent"),
    [
        ("hello!", False, Intent.CHAT),
        ("thanks", True, Intent.CHAT),
        ("What can you do?", False, Intent.CHAT),
        ("a cozy reading corner", False, Intent.SCENE),
        ("Create a pirate ship deck", False, Intent.SCENE),
        ("add a floor lamp", True, Intent.EDIT),
        ("remove the rug", True, Intent.EDIT),
        ("make the table bigger", True, Intent.EDIT),
        ("a pirate ship deck", True, Intent.SCENE),
    ],
)
def test_classify_intent_by_rules(message: str, has_plan: bool, intent: Intent) -> None:
    assert classify_intent(message, has_plan=has_plan) is intent


def test_unclear_message_is_left_to_the_llm() -> None:
    assert classify_intent("hmm maybe purple", has_plan=False) is None


def test_parse_intent_falls_back_to_chat_and_edit_needs_a_plan() -> None:
    assert parse_intent("garbage", has_plan=True) is Intent.CHAT
    assert parse_intent('{"intent": "edit"}', has_plan=False) is Intent.SCENE
    assert parse_intent('{"intent": "edit"}', has_plan=True) is Intent.EDIT


def existing(oid: str, name: str, prompt: str) -> SceneObject:
    obj = SceneObject(id=oid, name=name, prompt=prompt, state="ready")
    obj.image = ImageRef(file=f"images/{oid}-1.png", seed=1)
    return obj


def test_merge_plan_keeps_ids_and_images_adds_and_drops() -> None:
    chair, rug = existing("obj-aaaa0001", "Armchair", "a green armchair"), existing("obj-aaaa0002", "Rug", "a rug")
    plan = parse_plan(
        plan_text(
            wire_object(id="obj-aaaa0001", name="Armchair", prompt="a green armchair"),
            wire_object(id="", name="Floor lamp", prompt="a brass floor lamp"),
        ),
        20,
    )
    merged = merge_plan([chair, rug], plan)
    assert [o.name for o in merged] == ["Armchair", "Floor lamp"]
    assert merged[0].id == chair.id and merged[0].image is not None  # kept with its image
    assert merged[1].id not in (chair.id, rug.id) and merged[1].state == "waiting"


def test_merge_plan_changed_prompt_sends_card_back_to_waiting() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair")
    plan = parse_plan(plan_text(wire_object(id="obj-aaaa0001", prompt="a red leather armchair")), 20)
    (merged,) = merge_plan([chair], plan)
    assert merged.id == chair.id and merged.state == "waiting" and merged.image is None


def test_merge_plan_matches_by_name_when_the_model_forgets_ids() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair")
    plan = parse_plan(plan_text(wire_object(id="zzz", name="armchair", prompt="a green armchair")), 20)
    assert merge_plan([chair], plan)[0].id == chair.id


def test_edit_messages_carry_the_current_plan() -> None:
    chair = existing("obj-aaaa0001", "Armchair", "a green armchair")
    messages = plan_messages([], "add a lamp", max_objects=5, current=[chair], scene_name="Corner")
    assert "obj-aaaa0001" in messages[-1]["content"] and "add a lamp" in messages[-1]["content"]
    assert json.loads(current_plan_json([chair], "Corner"))["objects"][0]["id"] == chair.id


def test_control_characters_from_a_weak_model_are_dropped() -> None:
    plan = parse_plan(plan_text(wire_object(name="Arm\x0bchair\u200b", prompt="a\x07 chair\n\tnice")), 20)
    assert plan.objects[0].name == "Arm chair" and plan.objects[0].prompt == "a chair nice"


def test_markdown_in_names_is_shown_literally() -> None:
    from studio.planner import md_escape

    assert md_escape("**bold** <b>x</b> `c`") == "\\*\\*bold\\*\\* \\<b\\>x\\</b\\> \\`c\\`"
