"""The studio's logic end to end against fake services with the real contracts (fast): chat, plan, edit,
images filling in one by one, 3D jobs with progress and cancel, retries honouring Retry-After."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from servicekit.protocol import MAX_SEED
from studio import board, jobs
from studio.chat import TurnStep, chat_turn, flatten_history
from studio.clients import ContentFiltered, ServiceError
from studio.context import StudioContext
from studio.workspace import Scene
from tests.studio.fakes import NO_EDIT, PLAN, edit


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def steps_of(ctx: StudioContext, scene_id: str | None, text: str, mode: str = "plan") -> list[TurnStep]:
    return [step async for step in chat_turn(ctx, scene_id, user(text), mode)]


async def run_turn(
    ctx: StudioContext, scene_id: str | None, text: str, mode: str = "plan"
) -> tuple[list[str], Scene | None]:
    steps = await steps_of(ctx, scene_id, text, mode)
    return [s.reply for s in steps], steps[-1].scene


def test_flatten_history_turns_parts_into_text() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "hi"},
        {"role": "assistant", "content": []},
    ]
    assert flatten_history(history) == [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "hi"}]


def test_ask_mode_streams_a_normal_answer_without_a_plan(make_ctx: Any, services: Any) -> None:
    replies, scene = asyncio.run(run_turn(make_ctx(), None, "hello", "ask"))
    assert replies[-1] == "Hello there!" and len(replies) >= 3  # streamed, growing
    assert scene is None
    assert all("response_format" not in b for b in services[2]["log"])


def test_scene_request_makes_a_plan_in_one_structured_call(make_ctx: Any, services: Any) -> None:
    services[2]["plans"] = [json.dumps(PLAN)]
    replies, scene = asyncio.run(run_turn(make_ctx(), None, "a cozy reading corner"))
    assert scene is not None and [o.name for o in scene.objects] == ["Armchair", "Floor lamp"]
    assert "Reading corner" in replies[-1]
    (call,) = services[2]["log"]
    assert call["response_format"]["type"] == "json_schema" and call["response_format"]["json_schema"]["strict"]


def test_invalid_plan_is_retried_then_reported_and_nothing_saved(make_ctx: Any, services: Any) -> None:
    services[2]["plans"] = ["{broken", '{"scene_name": "x", "objects": []}']
    ctx = make_ctx()
    replies, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert "Nothing was changed" in replies[-1] and len(services[2]["log"]) == 2
    assert scene is None and ctx.workspace.list() == []


def test_edit_updates_the_plan_instead_of_starting_over(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    services[2]["plans"] = [json.dumps(PLAN)]
    _, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert scene is not None
    chair = scene.objects[0]
    shelf = {**PLAN["objects"][1], "name": "Bookshelf", "prompt": "a tall oak bookshelf"}
    services[2]["plans"] = [edit(remove=["Floor lamp"], add=[shelf])]
    replies, after = asyncio.run(run_turn(ctx, scene.id, "remove the lamp and add a bookshelf"))
    assert after is not None and after.id == scene.id
    assert [o.name for o in after.objects] == ["Armchair", "Bookshelf"] and after.objects[0].id == chair.id
    assert "Updated the plan" in replies[-1] and "Bookshelf" in replies[-1] and "Floor lamp" in replies[-1]
    call = services[2]["log"][-1]
    assert call["response_format"]["json_schema"]["name"] == "scene_edit"
    assert '"name": "Armchair"' in call["messages"][-1]["content"]  # the current plan was sent


def test_a_plan_streams_its_cards_before_it_is_saved(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], chunk_chars=8, chunk_delay_s=0.02)
    ctx = make_ctx()
    steps = asyncio.run(steps_of(ctx, None, "a cozy reading corner"))
    streamed = [s for s in steps if s.provisional]
    assert streamed and all(s.reply.startswith("Planning… ") for s in streamed)
    first_card = next(i for i, s in enumerate(steps) if s.scene and s.scene.objects)
    assert steps[first_card].provisional and [o.name for o in steps[first_card].scene.objects] == ["Armchair"]
    assert not ctx.workspace.list() or ctx.workspace.list()[0].objects == 2  # nothing saved before the end
    final = steps[-1]
    assert not final.provisional and final.scene is not None and ctx.workspace.exists(final.scene.id)
    card_ids = [o.id for o in streamed[-1].scene.objects]
    assert [o.id for o in final.scene.objects] == card_ids  # a streamed card keeps its id once saved


def test_a_plan_that_times_out_midway_leaves_the_scene_as_it_was(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx(ui_http_timeout_s=0.5, ui_http_retries=0)  # the timeout is what this tests
    scene = plan_scene(ctx, services)
    before = ctx.workspace.scene_dir(scene.id).joinpath("scene.json").read_bytes()
    lamp = {**PLAN["objects"][1], "name": "Desk lamp", "prompt": "a desk lamp"}
    services[2].update(plans=[edit(add=[lamp, {**lamp, "name": "Rug", "prompt": "a rug"}])], chunk_chars=10)
    services[2].update(stall_at=12, stall_s=1.5)  # a stall after the first card streamed
    steps = asyncio.run(steps_of(ctx, scene.id, "add a desk lamp and a rug"))
    assert any(s.provisional and len(s.scene.objects) == 3 for s in steps)  # the streamed card was shown
    assert "did not answer in time" in steps[-1].reply and "Nothing was changed" in steps[-1].reply
    assert not steps[-1].provisional and [o.name for o in steps[-1].scene.objects] == ["Armchair", "Floor lamp"]
    assert ctx.workspace.scene_dir(scene.id).joinpath("scene.json").read_bytes() == before


def test_an_edit_that_changes_nothing_says_so_and_saves_nothing(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    before = ctx.workspace.scene_dir(scene.id).joinpath("scene.json").read_bytes()
    services[2]["plans"] = [json.dumps(NO_EDIT)]
    replies, after = asyncio.run(run_turn(ctx, scene.id, "add an armchair, a floor lamp and a small side table"))
    assert replies[-1].startswith("Nothing changed: ") and after is not None and after.id == scene.id
    assert ctx.workspace.scene_dir(scene.id).joinpath("scene.json").read_bytes() == before


def test_the_planner_never_sees_errors_small_talk_or_summaries(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx(ui_http_timeout_s=0.5, ui_http_retries=0)
    services[2].update(plans=[json.dumps(PLAN)] * 2, stall_s=1.5)
    failed = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))[0][-1]
    services[2].update(stall_s=0)
    scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))[1]
    assert scene is not None
    asyncio.run(run_turn(ctx, scene.id, "hello, what can you do?", "ask"))
    services[2]["plans"] = [json.dumps(NO_EDIT)]
    history = [
        *user("a cozy reading corner"),
        {"role": "assistant", "content": failed},
        *user("hello, what can you do?"),
        {"role": "assistant", "content": "Hello there!"},
        *user("add a floor lamp"),
    ]

    async def turn() -> None:
        async for _ in chat_turn(ctx, scene.id, history):
            pass

    asyncio.run(turn())
    sent = services[2]["log"][-1]
    assert sent["response_format"]["json_schema"]["name"] == "scene_edit"
    text = json.dumps(sent["messages"])
    assert "did not answer" not in text and "Hello there" not in text and "what can you do" not in text
    assert "Here is a plan" not in text
    assert "Earlier request for this scene: a cozy reading corner" in text and "add a floor lamp" in text


def test_flagged_scene_text_is_refused_before_planning(make_ctx: Any, services: Any) -> None:
    services[3]["flag"] = ["forbidden"]
    replies, scene = asyncio.run(run_turn(make_ctx(), None, "make a forbidden scene"))
    assert "safety check" in replies[-1] and scene is None and services[2]["log"] == []


def plan_scene(ctx: StudioContext, services: Any) -> Scene:
    services[2]["plans"] = [json.dumps(PLAN)]
    _, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert scene is not None
    return scene


async def collect(gen: Any) -> list[Scene]:
    return [s async for s in gen]


def test_images_fill_in_card_by_card(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    snapshots = asyncio.run(collect(board.draw_images(ctx, scene.id)))
    assert [o.state for o in snapshots[0].objects] == ["generating", "generating"]
    assert sorted(sum(o.image is not None for o in s.objects) for s in snapshots) == [0, 1, 2]
    final = ctx.workspace.load(scene.id)
    assert all(
        o.state == "ready" and ctx.workspace.path(scene.id, o.image.file).is_file() for o in final.objects if o.image
    )


def test_random_seeds_span_what_the_services_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board.secrets, "randbelow", lambda n: n - 1)
    assert board.random_seed() == MAX_SEED
    monkeypatch.setattr(board.secrets, "randbelow", lambda n: 0)
    assert board.random_seed() == 1  # never 0, which asks the service to pick a seed


def test_filtered_prompt_shows_the_reason_and_other_cards_continue(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    services[3]["flag"] = ["brass"]
    asyncio.run(collect(board.draw_images(ctx, scene.id)))
    chair, lamp = ctx.workspace.load(scene.id).objects
    assert chair.state == "ready" and lamp.state == "filtered" and "safety" in lamp.error


def test_variants_pick_and_empty_prompt_refused(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    oid = scene.objects[0].id
    asyncio.run(collect(board.make_variants(ctx, scene.id, oid, 3)))
    obj = ctx.workspace.load(scene.id).objects[0]
    assert len(obj.variants) == 3 and len({v.seed for v in obj.variants}) == 3
    picked = asyncio.run(board.pick_variant(ctx, scene.id, oid, 2))
    assert picked.objects[0].image == obj.variants[2] and picked.objects[0].state == "ready"
    with pytest.raises(board.UserError, match="empty"):
        asyncio.run(board.edit_prompt(ctx, scene.id, oid, "   "))


def test_generate_3d_reports_progress_and_saves_glbs_with_params(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    asyncio.run(collect(board.draw_images(ctx, scene.id)))
    params = jobs.job_params(7, 20, 25, 5.0, 2.0, True)
    snapshots = asyncio.run(collect(jobs.generate_3d(ctx, scene.id, None, params)))
    assert any(o.model_state == "running" and o.job and o.job.progress == 0.5 for s in snapshots for o in s.objects)
    final = ctx.workspace.load(scene.id)
    for obj in final.objects:
        assert obj.model_state == "ready" and obj.model and obj.model.seed == 7 and obj.model.backend == "fake"
        assert ctx.workspace.path(scene.id, obj.model.file).read_bytes()[:4] == b"glTF"
    submitted = services_jobs(services)
    assert len(submitted) == 2
    assert all(j["body"]["ss_sampling_steps"] == 20 and j["body"]["no_texture"] is True for j in submitted)


def services_jobs(services: Any) -> list[dict[str, Any]]:
    return list(services[3]["_jobs"].values()) if "_jobs" in services[3] else []


def test_cancel_batch_stops_every_job(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    asyncio.run(collect(board.draw_images(ctx, scene.id)))
    services[3]["job_polls"] = 10_000

    async def run() -> None:
        gen = jobs.generate_3d(ctx, scene.id, None, jobs.job_params(0, 12, 12, 7.5, 3, False))
        async for s in gen:
            if all(o.job for o in s.objects):
                await jobs.cancel_jobs(ctx, scene.id)

    asyncio.run(asyncio.wait_for(run(), 20))
    assert [o.model_state for o in ctx.workspace.load(scene.id).objects] == ["cancelled", "cancelled"]


def test_busy_service_is_retried_after_retry_after(make_ctx: Any, services: Any) -> None:
    services[2]["busy"] = 2
    services[2]["plans"] = [json.dumps(PLAN)]
    _, scene = asyncio.run(run_turn(make_ctx(), None, "a cozy reading corner"))
    assert scene is not None and len(services[2]["log"]) == 3


def test_unreachable_service_gives_a_friendly_message(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        trellis_base_url="http://127.0.0.1:9",
        data_dir=tmp_path,  # type: ignore[call-arg]
        ui_http_retries=0,
    )
    ctx = StudioContext.from_settings(settings)

    async def moderate() -> bool:
        return await ctx.services.trellis.moderate("x")

    async def health() -> str:
        return (await ctx.health()).trellis.state

    with pytest.raises(ServiceError, match="not reachable"):
        asyncio.run(moderate())
    assert asyncio.run(health()) == "down"
    assert issubclass(ContentFiltered, ServiceError)


def test_lost_3d_service_ends_the_wait_with_a_message(make_ctx: Any, services: Any, tmp_path: Path) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    asyncio.run(collect(board.draw_images(ctx, scene.id)))
    services[3]["job_polls"] = 10_000
    ctx.settings.ui_http_timeout_s = 0.3

    async def run() -> None:
        async for s in jobs.generate_3d(ctx, scene.id, None, jobs.job_params(0, 12, 12, 7.5, 3, False)):
            if all(o.job for o in s.objects):
                ctx.services.trellis.root = "http://127.0.0.1:9"  # the service goes away mid-batch
                ctx.settings.ui_http_retries = 0

    asyncio.run(asyncio.wait_for(run(), 30))
    final = ctx.workspace.load(scene.id)
    assert all(o.model_state == "failed" and "Lost contact" in o.model_error for o in final.objects)


def test_imagegen_off_refuses_drawing_at_once_and_leaves_cards_waiting(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = plan_scene(ctx, services)
    services[3]["imagegen_off"] = True

    with pytest.raises(board.UserError, match="Text-to-image is off: upload an image for each object"):
        asyncio.run(collect(board.draw_images(ctx, scene.id)))
    # Refused before anything was sent: the cards still wait for an image, none is marked failed.
    assert all(o.state == "waiting" and not o.error for o in ctx.workspace.load(scene.id).objects)
