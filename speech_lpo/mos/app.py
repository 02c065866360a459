"""The listening panel (Gradio) and its admin page (FastAPI), served together by uvicorn.

Raters see no system names: each sample is copied into Gradio's cache under a keyed hash and a
neutral file name, and nothing outside the test's root directory is ever read. The questions open
only after every player (the sample, and the reference or CMOS's A) was heard through: each player's
play, pause and end events reach the store, which times them on its own clock (store.py, the gate).

The server owns the page: the store keeps which sample each rater has on screen, and a request for any
other one is refused. The browser keeps the rater's token and a browser id in localStorage
(``gr.BrowserState``, its key and secret kept in the database) and the sample's place in the rater's
order in a hidden JSON component (the item id would name the system), so a reload, a second tab or a
server restart resumes where it was. A refused action never raises ``gr.Error`` (that would turn every
output into an error box): it answers with a message and changes nothing else.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import uuid
from functools import partial
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI, Form, HTTPException, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from gradio.utils import get_upload_folder

from speech_lpo.mos.definition import Definition
from speech_lpo.mos.store import PLAYER_NAMES, AlreadyRated, Refused, Store, Unanswered

log = logging.getLogger("speech_lpo.mos")

# Polls the server; shows a banner while it cannot be reached and, once it is back, asks the panel
# to hand the player its audio again (a restarted server serves the audio from a new folder).
CONNECTION_WATCH = """
<script>
(() => {
  let lost = false;
  async function watch() {
    let ok = false;
    try { ok = (await fetch("healthz", {cache: "no-store"})).ok; } catch (e) {}
    let bar = document.getElementById("mos-offline");
    if (!bar && document.body) {
      bar = document.createElement("div");
      bar.id = "mos-offline";
      bar.setAttribute("role", "alert");
      bar.style.cssText = "position:sticky;top:0;z-index:1000;padding:8px 12px;background:#b91c1c;" +
        "color:#fff;font-weight:600";
      document.body.prepend(bar);
    }
    if (!bar) return;
    bar.hidden = ok;
    bar.textContent = ok ? "" : "Connection to the server lost. Your answers on this page are kept; " +
      "it reconnects by itself.";
    if (ok && lost) document.querySelector("#mos-reconnect")?.click();
    lost = !ok;
  }
  setInterval(watch, 2000);
})();
</script>
"""
# Accessible names Gradio does not give: each rating scale one named radio group (one Tab stop, arrow
# keys move along it; Gradio names every radio apart), and each player's buttons say which player.
ACCESSIBLE_NAMES = """
<script>
(() => {
  function name() {
    document.querySelectorAll(".mos-question").forEach((block) => {
      const wrap = block.querySelector(".wrap");
      const title = block.querySelector('[data-testid="block-info"]')?.textContent.trim();
      if (!wrap || !title) return;
      if (wrap.getAttribute("aria-label") !== title) {
        wrap.setAttribute("role", "radiogroup");
        wrap.setAttribute("aria-label", title);
      }
      block.querySelectorAll("input[type=radio]").forEach((r) => {
        if (r.name !== block.id) r.name = block.id;
      });
    });
    for (const [id, what] of [["mos-sample", "sample"], ["mos-reference", "reference recording"]]) {
      document.querySelectorAll(`#${id} button[aria-label]`).forEach((b) => {
        const label = b.getAttribute("aria-label");
        if (!label.endsWith(`(${what})`)) b.setAttribute("aria-label", `${label} (${what})`);
      });
    }
  }
  new MutationObserver(name).observe(document.documentElement,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["aria-label"]});
})();
</script>
"""
# after Submit: to the first question left unanswered, else to the next sample's player
SCROLL_AFTER_SUBMIT = """() => {
  setTimeout(() => {
    const missing = [...document.querySelectorAll(".mos-missing")].find((n) => n.innerText.trim());
    (missing || document.getElementById("mos-sample"))?.scrollIntoView({block: "center"});
  }, 100);
}"""
# 1x only (the gate measures time); text in full contrast (axe: 4.5:1); the scale on one line at 390 px
CSS = """
.mos-player .playback { display: none !important; }
.mos-missing { color: #b91c1c; font-weight: 600; }
.mos-question .info-text { color: var(--body-text-color); }
.mos-question .wrap { flex-wrap: nowrap; gap: 2px; }
.mos-question .wrap label {
  flex: 1 1 0; min-width: 0; flex-direction: column; align-items: center; gap: 2px; padding: 6px 0;
}
.mos-question .wrap label input { margin: 0; }
.mos-player .timestamps time { color: var(--body-text-color) !important; }
button.primary { background: #c2410c !important; border-color: #c2410c !important; }
"""


# the URL parameters in which crowd platforms pass a worker id (Prolific, MTurk, generic)
WORKER_PARAMS = ("PROLIFIC_PID", "workerId", "worker_id")
LISTEN_FIRST = (
    "Listen to the whole sample to enable the questions.",
    "Play both recordings from start to end to enable the questions.",
)


class AudioCopies:
    """Neutrally named copies of test audio in Gradio's cache; reads only files under ``root``.

    A copy's folder is a keyed hash of (role, path): its URL says nothing about the system, and a
    hidden reference played as a sample gets another URL than the same file shown as the reference.
    """

    def __init__(self, root: Path, key: str):
        self.root = root
        self.key = key
        self.copies: dict[tuple[str, Path], str] = {}

    def __call__(self, path: Path, role: str) -> str:
        if (role, path) not in self.copies:
            real = path.resolve()
            if not real.is_relative_to(self.root):
                raise Refused(f"Audio {path} is outside the test directory {self.root}.")
            name = hashlib.sha256(f"{self.key}:{role}:{real}".encode()).hexdigest()[:32]
            folder = Path(get_upload_folder()) / "speech_lpo_mos" / name
            folder.mkdir(parents=True, exist_ok=True)
            copy = folder / f"{role}{real.suffix.lower()}"
            copy.write_bytes(real.read_bytes())
            self.copies[role, path] = str(copy)
        return self.copies[role, path]


def _progress_html(done: int, total: int) -> str:
    bar = "height:8px;border-radius:4px"
    return (
        f'<div id="mos-progress"><div style="background:#e5e7eb;{bar}">'
        f'<div style="width:{100 * done / max(total, 1):.1f}%;background:#f97316;{bar}"></div></div>'
        f"<p>{done} of {total} samples rated</p></div>"
    )


def build_panel(store: Store, defn: Definition) -> gr.Blocks:
    served = AudioCopies(defn.root, store.secret("audio_name_key"))
    boot = uuid.uuid4().hex  # a page made by an earlier server process carries another one
    scale = defn.scale
    choices = scale.named_choices()
    ends = f"{scale.min:g} = {scale.min_label}, {scale.max:g} = {scale.max_label}"
    dims = defn.dimension_names()

    with gr.Blocks(title=defn.title) as panel:
        saved = gr.BrowserState(
            None, storage_key=f"speech_lpo_mos_{defn.name}", secret=store.secret("browser_state_secret")
        )  # {"token", "browser"}
        shown = gr.JSON(None, visible="hidden", elem_id="mos-page")  # {"at", "boot"}
        gr.Markdown(f"# {defn.title}\n\n{defn.instructions}")
        with gr.Column(visible=True) as entry_page:
            code = gr.Textbox(label="Invitation code", placeholder="the code from your invitation link")
            start = gr.Button("Start", variant="primary")
        message = gr.Markdown(elem_id="mos-message")
        progress = gr.HTML()
        with gr.Column(visible=False) as qualify_page:  # P.808 qualification: hearing / headphone check
            gr.Markdown("## Before the test\n\nPlay each recording and answer its question.")
            checks = []
            for i, q in enumerate(defn.qualification):
                gr.Audio(served(q.audio, f"check{i}"), label=f"Check {i + 1}", interactive=False, buttons=[])
                checks.append(gr.Radio(q.choices, label=q.question, elem_id=f"mos-check{i}"))
            qualify = gr.Button("Continue", variant="primary", elem_id="mos-qualify")
        with gr.Column(visible=False) as training_page:  # P.808 training: the scale's ends, heard first
            gr.Markdown("## Examples\n\nListen to these examples of the ends of the scale before you start.")
            for i, ex in enumerate(defn.training):
                gr.Audio(served(ex.audio, f"example{i}"), label=ex.caption, interactive=False, buttons=[])
            trained = gr.Button("Start rating", variant="primary", elem_id="mos-trained")
        with gr.Column(visible=False) as disqualified_page:
            gr.Markdown(
                "## Thank you\n\nThe answers to the listening check were not all right, so this test "
                "ends here for you. Thank you for your time.",
                elem_id="mos-disqualified",
            )
        with gr.Column(visible=False) as rating_page:
            reference = gr.Audio(
                label="A" if defn.kind == "cmos" else "Reference recording",
                interactive=False,
                buttons=[],
                visible=False,
                elem_id="mos-reference",
                elem_classes="mos-player",
            )
            sample = gr.Audio(
                label="B" if defn.kind == "cmos" else "Sample to rate",
                interactive=False,
                buttons=[],
                elem_id="mos-sample",
                elem_classes="mos-player",
            )
            radios, notes = [], []
            for d in defn.dimensions:
                radios.append(
                    gr.Radio(
                        choices,
                        label=d.label,
                        info=f"{d.question} ({ends})",
                        interactive=False,
                        elem_id=f"mos-{d.name}",
                        elem_classes="mos-question",
                    )
                )
                notes.append(gr.Markdown("", elem_id=f"mos-{d.name}-missing", elem_classes="mos-missing"))
            with gr.Row():
                back = gr.Button(
                    "Previous sample", elem_id="mos-back", scale=0, min_width=220, interactive=False
                )
                submit = gr.Button(
                    "Submit and continue", variant="primary", interactive=False, elem_id="mos-submit"
                )
            reconnect = gr.Button("Reload the player", visible="hidden", elem_id="mos-reconnect")
        with gr.Column(visible=False) as done_page:
            gr.Markdown(
                "## Thank you!\n\nAll samples are rated. You can close this page.", elem_id="mos-done"
            )
            completion = gr.Markdown(elem_id="mos-code", visible=defn.completion_code)
            comment = gr.Textbox(
                label="Comments (optional)", lines=3, elem_id="mos-comment", visible=defn.comment
            )
            save_comment = gr.Button("Send comment", elem_id="mos-comment-save", visible=defn.comment)

        page_of = {
            "entry": entry_page,
            "qualify": qualify_page,
            "disqualified": disqualified_page,
            "training": training_page,
            "rating": rating_page,
            "done": done_page,
        }
        outputs = [saved, shown, *page_of.values(), message, progress, reference, sample, completion]
        outputs += [*radios, *notes, back, submit]
        cleared = {note: "" for note in notes}

        def pages(which: str) -> dict:
            return {column: gr.update(visible=name == which) for name, column in page_of.items()}

        def entry_view(note: str, browser: str) -> dict:
            return {
                saved: {"token": None, "browser": browser},
                shown: None,
                **pages("entry"),
                message: note,
            }

        def players(token: str, item_id: str) -> dict:
            """The reference (or A) and the sample (or B) players' audio; CMOS swaps A and B at random."""
            item = defn.items[item_id]
            first, second = item.reference, item.audio
            if store.flipped(token, item_id):
                first, second = second, first
            ref = served(first, "reference") if first else None
            return {
                reference: gr.update(value=ref, visible=ref is not None),
                sample: served(second, "sample"),
            }

        def sample_view(token: str, item_id: str, answers: dict, at: int, ready: bool, note: str) -> dict:
            sign = -1 if store.flipped(token, item_id) else 1  # answers are stored as system vs baseline
            answers = {d: sign * v + 0.0 for d, v in answers.items()}
            return {
                shown: {"at": at, "boot": boot},
                **pages("rating"),
                message: note,
                **players(token, item_id),
                **{
                    r: gr.update(value=answers.get(d), interactive=ready)
                    for r, d in zip(radios, dims, strict=True)
                },
                **cleared,
                back: gr.update(interactive=at > 0),
                submit: gr.update(interactive=ready),
            }

        def rating_view(token: str, browser: str, note: str = "") -> dict:
            """The qualification or training when they come first, the first sample not rated yet, or
            the thank-you page."""
            stage = store.stage(token, browser)
            if stage != "rating":
                return {
                    saved: {"token": token, "browser": browser},
                    shown: None,
                    **pages(stage),
                    message: note,
                }
            item_id, done, total, heard, at = store.next_item(token, browser)
            view = {saved: {"token": token, "browser": browser}, progress: _progress_html(done, total)}
            if item_id is None:
                code_text = f"Your completion code: **{store.completion_code(token)}**"
                return {**view, shown: None, **pages("done"), message: note, completion: code_text}
            if not heard:
                note = note or LISTEN_FIRST[len(store.players(item_id)) > 1]
            return {**view, **sample_view(token, item_id, {}, at, heard, note)}

        def refused(action: str, e: Refused) -> dict:
            log.info("refused %s: %s", action, str(e)[:200])  # routine: one line, no traceback
            return {message: f"**{e}**"}

        def enter(token: str | None, kept: dict | None, takeover: bool, worker: str | None = None) -> dict:
            browser = (kept or {}).get("browser") or str(uuid.uuid4())
            token = (token or "").strip() or (kept or {}).get("token")
            if not token and defn.invitations == "required":
                return entry_view("Please enter the invitation code you were sent.", browser)
            try:
                return rating_view(store.enter(token, browser, takeover=takeover, worker=worker), browser)
            except Refused as e:
                log.info("refused entry: %s", str(e)[:200])
                return entry_view(f"**{e}**", browser)

        def on_enter(code: str | None, kept: dict | None) -> dict:
            return enter(code, kept, takeover=bool((code or "").strip()))

        def on_load(kept: dict | None, request: gr.Request) -> dict:
            token = request.query_params.get("token")
            worker = next(
                (request.query_params[k] for k in WORKER_PARAMS if request.query_params.get(k)), None
            )
            return enter(token, kept, takeover=bool(token), worker=worker)

        def current(kept: dict | None, page: dict | None) -> tuple[str, str, str]:
            if not kept or not kept.get("token") or not page or not isinstance(page.get("at"), int):
                raise Refused("No sample is open: reload the page.")
            order = store.order(kept["token"], kept["browser"])
            if not 0 <= page["at"] < len(order):
                raise Refused("No such sample: reload the page.")
            return kept["token"], kept["browser"], order[page["at"]]

        def restarted(page: dict | None) -> str:
            if page and page.get("boot") not in (None, boot):
                return "The server was restarted meanwhile; nothing you entered was lost. "
            return ""

        def on_play(player: str, kept: dict | None, page: dict | None) -> dict:
            try:
                store.play(*current(kept, page), player)
            except Refused as e:
                return refused("play", e)
            return {message: gr.update()}

        def on_pause(player: str, kept: dict | None, page: dict | None) -> dict:
            try:
                store.pause(*current(kept, page), player)
            except Refused as e:
                return refused("pause", e)
            return {message: gr.update()}

        def on_heard(player: str, kept: dict | None, page: dict | None) -> dict:
            try:
                token, browser, item = current(kept, page)
                through, ready, heard_s = store.heard(token, browser, item, player)
            except Refused as e:
                return refused("heard", e)
            if not through:
                length = store.length(token, item, player)
                return {
                    message: f"**Part of {PLAYER_NAMES[defn.kind][player]} was skipped or paused "
                    f"({heard_s:.1f} s of {length:.1f} s heard in one go).** Play it from the start to the "
                    "end at normal speed to enable the questions."
                }
            if not ready:
                (other,) = set(store.players(item)) - {player}
                return {message: f"Now play {PLAYER_NAMES[defn.kind][other]} from start to end."}
            return {
                message: "",
                **{r: gr.update(interactive=True) for r in radios},
                submit: gr.update(interactive=True),
            }

        def on_submit(kept: dict | None, page: dict | None, *scores: float | None) -> dict:
            note = restarted(page)
            try:
                token, browser, item = current(kept, page)
                store.submit(token, browser, item, dict(zip(dims, scores, strict=True)))
            except Unanswered as e:
                log.info("refused submit: unanswered %s", ", ".join(e.missing))
                labels = {d.name: d.label for d in defn.dimensions}
                return {
                    message: note,
                    shown: {**page, "boot": boot},
                    **{
                        n: f"Please answer “{labels[d]}”." if d in e.missing else ""
                        for n, d in zip(notes, dims, strict=True)
                    },
                }
            except AlreadyRated as e:
                log.info("refused submit: %s", str(e)[:200])
                return rating_view(token, browser, f"**{e}**")
            except Refused as e:
                return refused("submit", e)
            return rating_view(token, browser, note + ("Saved. " if note else ""))

        def on_back(kept: dict | None, page: dict | None) -> dict:
            try:
                token, browser, item = current(kept, page)
                previous = store.previous(token, browser, item)
            except Refused as e:
                return refused("back", e)
            if previous is None:
                return {
                    message: "**This is the first sample; there is none before it.**",
                    back: gr.update(interactive=False),
                }
            item_id, answers, at = previous
            note = "You are changing an earlier answer; submit to go on where you were."
            return sample_view(token, item_id, answers, at, True, restarted(page) + note)

        def on_qualify(kept: dict | None, *answers: str | None) -> dict:
            if not kept or not kept.get("token"):
                return {message: "**Enter the test first.**"}
            try:
                store.qualify(kept["token"], kept["browser"], list(answers))
                return rating_view(kept["token"], kept["browser"])
            except Refused as e:
                return refused("qualification", e)

        def on_trained(kept: dict | None) -> dict:
            if not kept or not kept.get("token"):
                return {message: "**Enter the test first.**"}
            try:
                store.trained(kept["token"], kept["browser"])
                return rating_view(kept["token"], kept["browser"])
            except Refused as e:
                return refused("training", e)

        def on_comment(kept: dict | None, text: str) -> dict:
            try:
                if not kept or not kept.get("token"):
                    raise Refused("Enter the test first.")
                store.save_comment(kept["token"], kept["browser"], text or "")
            except Refused as e:
                return refused("comment", e)
            return {message: "Thank you, your comment is saved."}

        def on_reconnect(kept: dict | None, page: dict | None) -> dict:
            """The server is reachable again: hand the players their audio anew, change nothing else."""
            try:
                token, _, item = current(kept, page)
            except Refused:
                return {message: gr.update()}
            return {message: "Connection restored.", **players(token, item)}

        private = {"api_visibility": "undocumented"}
        # the gate measures time between these events: let them run at once, not queue behind others
        timing = {**private, "concurrency_limit": None, "trigger_mode": "multiple"}
        panel.load(on_load, inputs=[saved], outputs=outputs, api_visibility="private")
        start.click(on_enter, inputs=[code, saved], outputs=outputs, api_name="enter", **private)
        code.submit(on_enter, inputs=[code, saved], outputs=outputs, api_visibility="private")
        for player, audio in (("sample", sample), ("reference", reference)):
            audio.play(
                partial(on_play, player), [saved, shown], [message], api_name=f"play_{player}", **timing
            )
            audio.pause(
                partial(on_pause, player), [saved, shown], [message], api_name=f"pause_{player}", **timing
            )
            # Audio's "stop" event fires when playback reaches the end
            audio.stop(
                partial(on_heard, player),
                [saved, shown],
                [message, *radios, submit],
                api_name=f"heard_{player}",
                **timing,
            )
        # preprocess=False: the store checks every score and refuses a bad one in one short log line
        # (Gradio's own check of a Radio's value prints a traceback echoing the whole value)
        submit.click(
            on_submit,
            inputs=[saved, shown, *radios],
            outputs=outputs,
            api_name="submit",
            preprocess=False,
            **private,
        ).then(None, js=SCROLL_AFTER_SUBMIT)
        back.click(on_back, inputs=[saved, shown], outputs=outputs, api_name="back", **private)
        qualify.click(on_qualify, inputs=[saved, *checks], outputs=outputs, **private)
        trained.click(on_trained, inputs=[saved], outputs=outputs, **private)
        save_comment.click(on_comment, inputs=[saved, comment], outputs=[message], **private)
        reconnect.click(
            on_reconnect,
            inputs=[saved, shown],
            outputs=[message, reference, sample],
            api_visibility="private",
        )
    return panel


def _admin_html(defn: Definition, progress: list[dict], token: str) -> str:
    def release_form(rater: str) -> str:
        return (
            f"<form method='post' action='/admin/release?token={html.escape(token)}'>"
            f"<input type='hidden' name='rater' value='{html.escape(rater)}'>"
            "<button type='submit'>release</button></form>"
        )

    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in ("rater", "kind", "created", "expires"))
        + f"<td>{r['done']} / {r['total']}</td><td>{r['last']}</td>"
        + "".join(f"<td>{html.escape(r[k])}</td>" for k in ("qualified", "comment"))
        + f"<td>{release_form(r['rater'])}</td></tr>"
        for r in progress
    )
    finished = sum(r["total"] > 0 and r["done"] == r["total"] for r in progress)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(defn.title)}: admin</title></head>"
        f"<body><h1>{html.escape(defn.title)}: progress</h1>"
        f"<p>{len(progress)} raters, {finished} finished. "
        f"<a href='/admin/ratings.csv?token={html.escape(token)}'>Download all ratings (CSV)</a></p>"
        "<p>Release frees an invitation from the browser that holds it, so that the rater can go on "
        "in another one.</p>"
        "<table border='1' cellpadding='4'><tr><th>rater</th><th>kind</th><th>created</th><th>expires</th>"
        "<th>rated</th><th>last answer</th><th>qualified</th><th>comment</th><th></th></tr>"
        f"{rows}</table></body></html>"
    )


def build_app(store: Store, defn: Definition) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no API docs for raters to find
    admin_token = store.secret("admin_token")

    def check(token: str) -> None:
        if not secrets.compare_digest(token.encode(), admin_token.encode()):
            raise HTTPException(status_code=403, detail="wrong or missing admin token")

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/admin", response_class=HTMLResponse)
    def admin(token: str = Query("")) -> str:
        check(token)
        return _admin_html(defn, store.progress(), token)

    @app.post("/admin/release")
    def release(token: str = Query(""), rater: str = Form(...)) -> RedirectResponse:
        check(token)
        if not store.release(rater):
            raise HTTPException(status_code=404, detail="unknown rater")
        log.info("released %s from its browser", rater)
        return RedirectResponse(f"/admin?token={token}", status_code=303)

    @app.get("/admin/ratings.csv")
    def export(token: str = Query("")) -> Response:
        check(token)
        return Response(
            store.ratings_csv(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{defn.name}_ratings.csv"'},
        )

    return gr.mount_gradio_app(
        app,
        build_panel(store, defn),
        path="/",
        footer_links=[],  # no "Use via API", "Settings" or run history for raters
        run_history=False,
        head=CONNECTION_WATCH + ACCESSIBLE_NAMES,
        css=CSS,
    )


def serve(store: Store, defn: Definition, host: str, port: int) -> None:
    # audio copies go to a folder of this server's own, removed when it stops
    cache = Path(tempfile.mkdtemp(prefix="speech_lpo_mos_"))
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    # uvicorn re-raises SIGTERM after its shutdown; as an exception it lets `finally` clean up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    url = f"http://{host}:{port}"
    print(f"panel: {url}/  admin: {url}/admin?token={store.secret('admin_token')}", flush=True)
    try:
        # open event streams never end by themselves: give them 3 s on Ctrl-C / SIGTERM, not forever
        uvicorn.run(
            build_app(store, defn), host=host, port=port, log_level="warning", timeout_graceful_shutdown=3
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
