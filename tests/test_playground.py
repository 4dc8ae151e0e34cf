"""`scratchlm playground` as a user meets it: the real server, driven by headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import random_documents, small_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# What this machine's Chromium needs headless; Playwright adds the rest of its own flags.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PROMPT, NEW_TOKENS = "In 1999,", 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir) -> Path:
    """runs/tiny as the pipeline leaves it, small: pretrain with checkpoints at steps 2 and 20, sft, partial ones."""
    import torch

    from scratchlm.model.files import init_model, save_model
    from scratchlm.run_dir import RunDir
    from scratchlm.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("runs") / "tiny"
    pretrain, sft = root / "pretrain", root / "sft"
    model, tokenizer = init_model(small_config(max_position_embeddings=64), root.parent / "init", tokenizer_dir, seed=0)
    ids = tokenizer(" ".join(random_documents(60, seed=1)), return_tensors="pt").input_ids[0]
    windows = ids[: ids.numel() // 64 * 64].view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1, 21):  # real training steps, so the two checkpoints continue a prompt differently
        batch = windows[8 * step : 8 * step + 8]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in (2, 20):
            save_checkpoint(
                RunDir(pretrain).checkpoint(step), model, optimizer, {"step": step}, model.config, tokenizer
            )
    save_model(model, tokenizer, pretrain / "export")
    save_model(model, tokenizer, sft / "checkpoint-5")
    (sft / "checkpoint-5" / "trainer_state.json").write_text("{}")
    # Never listed: a checkpoint still being written, one without its marker, a TRL one without trainer state.
    (pretrain / "checkpoints" / "step_00000030.tmp").mkdir()
    (pretrain / "checkpoints" / "step_00000040").mkdir()
    save_model(model, tokenizer, sft / "checkpoint-9")
    return root


@pytest.fixture(scope="module")
def url(runs, tmp_path_factory):
    stderr = tmp_path_factory.mktemp("server") / "stderr.txt"
    command = [sys.executable, "-m", "scratchlm.cli", "playground", "--runs", str(runs), "--port", "0"]
    with stderr.open("w") as errors:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("playground: http://127.0.0.1:"), line + stderr.read_text()
        yield line.split()[1]
    finally:
        server.terminate()
        server.wait(timeout=30)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "api/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def greedy(path: Path, prompt: str, max_new_tokens: int) -> str:
    """What the playground must show, computed here without it."""
    from scratchlm.model.files import generation_config, load_model_from

    model, tokenizer = load_model_from(path)
    inputs = tokenizer(prompt, return_tensors="pt")
    stops = generation_config(tokenizer)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops.eos_token_id,
        pad_token_id=stops.pad_token_id,
    )
    return tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def chromium():
    """Playwright driving Debian's Chromium; missing, the test is skipped, except in CI, which installs both."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    if sync_api is None or not CHROMIUM.is_file():
        message = "needs Chromium and Playwright: apt-get install chromium && pip install playwright"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_api


def test_two_checkpoints_side_by_side_in_chromium(runs, url):
    checkpoints = runs / "pretrain" / "checkpoints"
    early, late = (greedy(checkpoints / name, PROMPT, NEW_TOKENS) for name in ("step_00000002", "step_00000020"))
    assert early != late
    playwright_api = chromium()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            page.get_by_label("pretrain/step 2", exact=True).check()
            page.get_by_label("pretrain/step 20", exact=True).check()
            page.get_by_role("textbox", name="Prompt").fill(PROMPT)
            page.get_by_label("max new tokens").fill(str(NEW_TOKENS))
            page.get_by_role("button", name="Generate").click()
            page.locator(".column").nth(1).wait_for(timeout=60_000)
            columns = page.locator(".column")
            assert columns.count() == 2
            assert columns.locator("h2").all_text_contents() == ["pretrain/step 2", "pretrain/step 20"]
            assert columns.locator(".continuation").all_text_contents() == [early, late]
            first, second = (columns.nth(i).bounding_box() for i in range(2))
            assert first["x"] + first["width"] <= second["x"] and first["y"] == second["y"]  # side by side
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
            # An error is a visible line on the page, not a silent failure.
            page.get_by_role("textbox", name="Prompt").fill("  ")
            page.get_by_role("button", name="Generate").click()
            playwright_api.expect(page.get_by_role("alert")).to_have_text("the prompt is empty")
        finally:
            browser.close()


def test_checkpoints_are_found_in_run_order_and_partial_ones_skipped(runs, url):
    def found() -> list[str]:
        with urllib.request.urlopen(url + "api/checkpoints", timeout=30) as response:
            return [c["id"] for c in json.load(response)["checkpoints"]]

    assert found() == ["pretrain/step 2", "pretrain/step 20", "pretrain/export", "sft/checkpoint-5"]
    shutil.copytree(runs / "sft" / "checkpoint-5", runs / "sft" / "checkpoint-12")  # saved while it serves
    assert found()[-2:] == ["sft/checkpoint-5", "sft/checkpoint-12"]  # a page reload looks again


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "The", "checkpoints": ["pretrain/step 3"]}, "unknown checkpoint 'pretrain/step 3'"),
        ({"prompt": "The", "checkpoints": ["../../etc"]}, "unknown checkpoint '../../etc'"),
        ({"prompt": "", "checkpoints": ["sft/checkpoint-5"]}, "the prompt is empty"),
        ({"prompt": "The", "checkpoints": []}, "choose at least one checkpoint"),
        ({"prompt": "The", "checkpoints": ["sft/checkpoint-5"], "temperature": -1}, "temperature must be"),
        ({"prompt": "The " * 60, "checkpoints": ["pretrain/export"]}, "context of 64 tokens"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(url, body, message):
    status, answer = post(url, {"max_new_tokens": 8, **body})
    assert status == 400 and message in answer["error"]


def test_chat_prompts_use_the_template_and_sampling_is_seeded(url):
    body = {"prompt": "hello", "checkpoints": ["sft/checkpoint-5"], "chat": True, "temperature": 1.0, "seed": 3}
    (status, first), (_, second) = post(url, body), post(url, body)
    assert status == 200 and first["results"][0]["chat"] is True
    assert first["results"][0]["text"] == second["results"][0]["text"]


def test_runs_without_checkpoints_are_an_error(tmp_path, capsys):
    from scratchlm.cli import main

    (tmp_path / "empty" / "pretrain" / "checkpoints" / "step_00000001").mkdir(parents=True)  # no COMPLETE marker
    assert main(["playground", "--runs", str(tmp_path / "empty"), "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --runs {tmp_path / 'empty'}: no checkpoints")
