"""The listening panel (Gradio) and its admin page (FastAPI), served together by uvicorn.

Raters see no system names: each sample is copied into Gradio's cache under a keyed hash and a
neutral file name, and nothing outside the test's root directory is ever read. Answers are enabled
only after the sample has been played to its end (Audio's ``stop`` event reached the server; the
store refuses answers otherwise too).
The rater's token and a browser id live in the browser's localStorage (``gr.BrowserState``, its
key and secret kept in the database), so a reload, or a server restart, resumes at the first
unrated item.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import uuid
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from gradio.utils import get_upload_folder

from speech_lpo.mos.definition import Definition
from speech_lpo.mos.store import Refused, Store


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
    scale = defn.scale
    choices = [(f"{v:g}", v) for v in scale.choices()]
    ends = f"{scale.min:g} = {scale.min_label}, {scale.max:g} = {scale.max_label}"

    with gr.Blocks(title=defn.title) as panel:
        session = gr.State(None)  # {"token", "browser", "item"}: who is rating what, kept on the server
        saved = gr.BrowserState(
            None, storage_key=f"speech_lpo_mos_{defn.name}", secret=store.secret("browser_state_secret")
        )
        gr.Markdown(f"# {defn.title}\n\n{defn.instructions}")
        with gr.Column(visible=True) as entry_page:
            code = gr.Textbox(label="Invitation code", placeholder="the code from your invitation link")
            start = gr.Button("Start", variant="primary")
        message = gr.Markdown(elem_id="mos-message")
        progress = gr.HTML()
        with gr.Column(visible=False) as rating_page:
            reference = gr.Audio(label="Reference recording", interactive=False, buttons=[], visible=False)
            sample = gr.Audio(label="Sample to rate", interactive=False, buttons=[], elem_id="mos-sample")
            radios = [
                gr.Radio(
                    choices,
                    label=d.label,
                    info=f"{d.question} ({ends})",
                    interactive=False,
                    elem_id=f"mos-{d.name}",
                )
                for d in defn.dimensions
            ]
            with gr.Row():
                back = gr.Button("Previous sample", elem_id="mos-back", scale=0, min_width=220)
                submit = gr.Button(
                    "Submit and continue", variant="primary", interactive=False, elem_id="mos-submit"
                )
        with gr.Column(visible=False) as done_page:
            gr.Markdown(
                "## Thank you!\n\nAll samples are rated. You can close this page.", elem_id="mos-done"
            )

        outputs = [session, saved, entry_page, rating_page, done_page, message, progress, reference, sample]
        outputs += [*radios, submit]

        def entry_view(note: str, browser: str) -> list:
            keep = [gr.update()] * (len(outputs) - 6)
            pages = [gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)]
            return [None, {"token": None, "browser": browser}, *pages, note, *keep]

        def rating_view(token: str, browser: str) -> list:
            """The first sample not rated yet, or the thank-you page."""
            item_id, done, total, heard = store.next_item(token, browser)
            state = {"token": token, "browser": browser, "item": item_id}
            kept = {"token": token, "browser": browser}
            progress_now = _progress_html(done, total)
            if item_id is None:
                pages = [gr.update(visible=False), gr.update(visible=False), gr.update(visible=True)]
                rest = [gr.update()] * (2 + len(radios) + 1)
                return [state, kept, *pages, "", progress_now, *rest]
            note = "" if heard else "Listen to the whole sample to enable the questions."
            return [state, kept, *sample_view(item_id, {}, heard > 0, note, progress_now)]

        def sample_view(
            item_id: str, answers: dict, ready: bool, note: str, progress_now: str | dict
        ) -> list:
            item = defn.items[item_id]
            pages = [gr.update(visible=False), gr.update(visible=True), gr.update(visible=False)]
            ref = served(item.reference, "reference") if item.reference else None
            return [
                *pages,
                note,
                progress_now,
                gr.update(value=ref, visible=ref is not None),
                served(item.audio, "sample"),
                *[gr.update(value=answers.get(d), interactive=ready) for d in defn.dimension_names()],
                gr.update(interactive=ready),
            ]

        def enter(token: str | None, kept: dict | None) -> list:
            browser = (kept or {}).get("browser") or str(uuid.uuid4())
            token = (token or "").strip() or (kept or {}).get("token")
            if not token and defn.invitations == "required":
                return entry_view("Please enter the invitation code you were sent.", browser)
            try:
                return rating_view(store.enter(token, browser), browser)
            except Refused as e:
                return entry_view(f"**{e}**", browser)

        def on_load(kept: dict | None, request: gr.Request) -> list:
            return enter(request.query_params.get("token"), kept)

        def count_play(state: dict | None, to_end: bool) -> None:
            if not state or not state.get("item"):
                raise gr.Error("No sample is open.")
            try:
                store.play(state["token"], state["browser"], state["item"], to_end)
            except Refused as e:
                raise gr.Error(str(e)) from e

        def on_play(state: dict | None) -> None:
            count_play(state, to_end=False)

        def on_heard(state: dict | None) -> list:
            count_play(state, to_end=True)
            return ["", *[gr.update(interactive=True) for _ in radios], gr.update(interactive=True)]

        def on_submit(state: dict | None, *scores: float | None) -> list:
            if not state or not state.get("item"):
                raise gr.Error("No sample is open.")
            try:
                store.submit(
                    state["token"],
                    state["browser"],
                    state["item"],
                    dict(zip(defn.dimension_names(), scores, strict=True)),
                )
            except Refused as e:
                raise gr.Error(str(e)) from e
            return rating_view(state["token"], state["browser"])

        def on_back(state: dict | None) -> list:
            if not state:
                raise gr.Error("Enter the test first.")
            try:
                previous = store.previous(state["token"], state["browser"], state["item"])
            except Refused as e:
                raise gr.Error(str(e)) from e
            if previous is None:
                raise gr.Error("This is the first sample.")
            item_id, answers = previous
            state = {**state, "item": item_id}
            note = "You are changing an earlier answer; submit to go on where you were."
            return [state, gr.update(), *sample_view(item_id, answers, True, note, gr.update())]

        panel.load(on_load, inputs=[saved], outputs=outputs, api_name=False)
        start.click(enter, inputs=[code, saved], outputs=outputs, api_name="enter")
        code.submit(enter, inputs=[code, saved], outputs=outputs, api_name=False)
        sample.play(on_play, inputs=[session], outputs=None, api_name="play")
        # Audio's "stop" event fires when playback reaches the end
        sample.stop(on_heard, inputs=[session], outputs=[message, *radios, submit], api_name="heard")
        submit.click(on_submit, inputs=[session, *radios], outputs=outputs, api_name="submit")
        back.click(on_back, inputs=[session], outputs=outputs, api_name="back")
    return panel


def _admin_html(defn: Definition, progress: list[dict], token: str) -> str:
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in ("rater", "kind", "created", "expires"))
        + f"<td>{r['done']} / {r['total']}</td><td>{r['last']}</td></tr>"
        for r in progress
    )
    finished = sum(r["total"] > 0 and r["done"] == r["total"] for r in progress)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(defn.title)}: admin</title></head>"
        f"<body><h1>{html.escape(defn.title)}: progress</h1>"
        f"<p>{len(progress)} raters, {finished} finished. "
        f"<a href='/admin/ratings.csv?token={html.escape(token)}'>Download all ratings (CSV)</a></p>"
        "<table border='1' cellpadding='4'><tr><th>rater</th><th>kind</th><th>created</th><th>expires</th>"
        f"<th>rated</th><th>last answer</th></tr>{rows}</table></body></html>"
    )


def build_app(store: Store, defn: Definition) -> FastAPI:
    app = FastAPI()
    admin_token = store.secret("admin_token")

    def check(token: str) -> None:
        if not secrets.compare_digest(token.encode(), admin_token.encode()):
            raise HTTPException(status_code=403, detail="wrong or missing admin token")

    @app.get("/admin", response_class=HTMLResponse)
    def admin(token: str = Query("")) -> str:
        check(token)
        return _admin_html(defn, store.progress(), token)

    @app.get("/admin/ratings.csv")
    def export(token: str = Query("")) -> Response:
        check(token)
        return Response(
            store.ratings_csv(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{defn.name}_ratings.csv"'},
        )

    return gr.mount_gradio_app(app, build_panel(store, defn), path="/")


def serve(store: Store, defn: Definition, host: str, port: int) -> None:
    url = f"http://{host}:{port}"
    print(f"panel: {url}/  admin: {url}/admin?token={store.secret('admin_token')}", flush=True)
    # open event streams never end by themselves: give them 3 s on Ctrl-C / SIGTERM, not forever
    uvicorn.run(
        build_app(store, defn), host=host, port=port, log_level="warning", timeout_graceful_shutdown=3
    )
