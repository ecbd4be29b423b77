"""The Gradio page of ``scorestudio ui``: a tab per task, the job panel, the results and the run browser.

Each task tab turns its widgets into a config (:func:`scorestudio.ui.tasks.build_config`), shows
it as YAML with a download button, and queues a job that trains it. Under the tabs the job panel
follows this page's latest job (step, it/s, losses, the newest validation picture), and the
results panel shows a run folder: pictures, turntables, the GLB in a 3-D viewer, SVG files, a
before/after slider, metrics and loss curves. A handler turns a bad input into a message on the
page, never a traceback.
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from scorestudio.ui import tasks as T
from scorestudio.ui.jobs import Job, JobQueue, log_tail
from scorestudio.ui.runs import RunInfo, browse, latest_preview, loss_rows, matching, results, run_folder
from scorestudio.ui.uploads import MAX_UPLOAD_BYTES, UploadError, prepare_image
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import RegistryError, known_names

log = logging.getLogger("scorestudio.ui")
TICK_S = 0.5
IMAGE_SIDE = 64          # uploads are resized to the embedded prior's image size
EXPECTED = (ValueError, ConfigError, RegistryError, UploadError, OSError)
KEEP = object()          # an output a failed handler leaves as it is
CSS = ".ss-message p {margin: 0}"


@dataclass
class Context:
    """What the handlers share: the outputs folder (resolved) and the job queue."""

    outputs: Path
    queue: JobQueue

    @property
    def configs_dir(self) -> Path:
        return self.outputs / "ui" / "configs"

    @property
    def uploads_dir(self) -> Path:
        return self.outputs / "ui" / "uploads"


def message(text: str, kind: str = "info") -> str:
    """A message box's Markdown: ⚠ before errors and warnings; the text escaped (it may quote input)."""
    return ("⚠ " if kind != "info" else "") + html.escape(text)


def guarded(*fallback: Any, box: int) -> Callable:
    """Run a handler; an error becomes a message in output ``box`` and the other outputs take
    their ``fallback`` values (KEEP: unchanged). Unexpected errors are logged with their
    traceback on the server; the page gets one line."""
    def decorate(fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except EXPECTED as err:
                text = message(str(err), "error")
            except Exception as err:   # noqa: BLE001  (the page must not show a traceback)
                log.exception("scorestudio ui: %s failed", fn.__name__)
                text = message(f"internal error ({type(err).__name__}): {err}", "error")
            outputs = [gr.skip() if value is KEEP else value for value in fallback]
            outputs[box] = text
            return tuple(outputs) if len(outputs) > 1 else text
        return wrapper
    return decorate


def generator_available(name: Optional[str]) -> bool:
    """Whether ``find(name)`` knows the generator, without importing it (and torch) at start."""
    return name in known_names("generators")


# ---- a task tab ------------------------------------------------------------------------------
def setting_widget(task: T.Task, name: str, value: Any) -> gr.components.Component:
    setting = T.SETTINGS[name]
    elem = f"{task.name}-{name}"
    if setting.kind == "choice":
        return gr.Dropdown(list(setting.choices), value=value, label=setting.label, elem_id=elem)
    if setting.kind == "floats":
        return gr.Textbox(value, label=setting.label, info=setting.info, elem_id=elem)
    return gr.Number(value, label=setting.label, info=setting.info or None, elem_id=elem, min_width=120,
                     precision=0 if setting.kind == "int" else None)


def task_tab(task: T.Task, ctx: Context, current_job: gr.State) -> None:
    """The widgets and events of one task's tab."""
    configs = T.offered_configs(task, generator_available)
    start = T.defaults(task, configs[0])
    gr.Markdown(task.about)
    with gr.Row():
        with gr.Column(scale=3):
            config = gr.Dropdown([(T.describe(n), n) for n in configs], value=configs[0], label=task.config_label,
                                 elem_id=f"{task.name}-config")
            extra = [config]
            if task.prior_key:
                extra.append(gr.Dropdown(list(T.PRIORS), value=start.get("prior"), label="prior",
                                         info="Stable Diffusion / IF: local weights as configs/priors/*.yaml name them",
                                         elem_id=f"{task.name}-prior"))
            widgets: dict[str, gr.components.Component] = {}
            if "prompt" in task.keys:
                widgets["prompt"] = gr.Textbox(start["prompt"], label="prompt", max_length=T.PROMPT_MAX_CHARS,
                                               elem_id=f"{task.name}-prompt")
                vocabulary = gr.Markdown(T.vocabulary(start.get("prior")) or "", elem_id=f"{task.name}-vocabulary")
                warning = gr.Markdown("", elem_id=f"{task.name}-warning", elem_classes="ss-message")
            with gr.Row():
                for name in task.settings:
                    if name != "prompt":
                        widgets[name] = setting_widget(task, name, start.get(name))
            image = gr.State(None)   # the app's own PNG of an accepted upload
            if task.image_key:
                upload = gr.File(label=f"image: {task.image_help}", file_types=[".png", ".jpg", ".jpeg"],
                                 type="filepath", elem_id=f"{task.name}-upload")
                upload_msg = gr.Markdown("", elem_id=f"{task.name}-upload-message", elem_classes="ss-message")
                thumb = gr.Image(label="the input as the run reads it", interactive=False, height=160,
                                 elem_id=f"{task.name}-upload-preview")
            run = gr.Button("Run", variant="primary", elem_id=f"{task.name}-run")
            run_msg = gr.Markdown("", elem_id=f"{task.name}-message", elem_classes="ss-message")
        with gr.Column(scale=2):
            first = T.save_config(T.build_config(task, configs[0], start, ctx.outputs), ctx.configs_dir, configs[0])
            yaml_box = gr.Code(first.read_text(encoding="utf-8"), language="yaml", lines=18, max_lines=30,
                               label="the config these settings produce", interactive=False,
                               elem_id=f"{task.name}-yaml")
            download = gr.DownloadButton("Download config (YAML)", value=str(first), elem_id=f"{task.name}-download")

    names = list(widgets)
    has_prior = len(extra) == 2
    inputs = [*extra, image, *widgets.values()]

    def values_of(args: tuple) -> tuple[str, dict, Optional[Path]]:
        name, *rest = args
        values = {"prior": rest.pop(0)} if has_prior else {}
        path = rest.pop(0)
        values.update(zip(names, rest))
        return name, values, Path(path) if path else None

    def config_of(args: tuple):
        """(config name, settings, the config, its saved file)."""
        name, values, path = values_of(args)
        cfg = T.build_config(task, name, values, ctx.outputs, path)
        return name, values, cfg, T.save_config(cfg, ctx.configs_dir, name)

    @guarded(KEEP, KEEP, None, box=2)
    def show_config(*args):
        saved = config_of(args)[-1]
        return saved.read_text(encoding="utf-8"), str(saved), ""

    @guarded(KEEP, None, box=1)
    def submit(*args):
        name, values, cfg, saved = config_of(args)
        prompt = values.get("prompt") or ""
        job = ctx.queue.submit(f"{task.label} · {name}" + (f" · “{prompt}”" if prompt else ""),
                               ["train", "--config", str(saved)], cfg.trainer.max_steps)
        return job.id, message(f"job {job.id} queued: {name} with {saved.name}")

    @guarded(*[KEEP] * len(names + extra[1:]), box=0)
    def reset(name: str):
        values = T.defaults(task, name)
        return tuple(values.get(n) for n in names) + ((values.get("prior"),) if has_prior else ())

    config_outputs = [yaml_box, download, run_msg]
    config.change(reset, [config], [*widgets.values(), *extra[1:]], show_progress="hidden")
    for widget in (*extra, *widgets.values()):
        widget.change(show_config, inputs, config_outputs, show_progress="hidden")
    run.click(submit, inputs, [current_job, run_msg], show_progress="hidden")

    if "prompt" in widgets:
        def check_prompt(prompt: str, prior: Optional[str] = None):
            prior = prior or start.get("prior")
            try:
                reason = T.prompt_warning(prior, T.check_prompt(prompt))
            except EXPECTED as err:
                reason = str(err)
            return T.vocabulary(prior) or "", message(reason, "warning") if reason else ""

        checked = [widgets["prompt"], *extra[1:]]
        for widget in checked:
            widget.change(check_prompt, checked, [vocabulary, warning], show_progress="hidden")

    if task.image_key:
        @guarded(None, None, None, KEEP, KEEP, KEEP, box=1)
        def accept(path: Optional[str], *args):
            """The upload checked and prepared, and the config that names it (computed here: a
            chained event could read the image state from before this upload)."""
            prepared, note = None, ""
            if path:
                try:
                    prepared = str(prepare_image(path, IMAGE_SIDE, ctx.uploads_dir))
                    note = message(f"accepted {Path(path).name}: the run reads it as a "
                                   f"{IMAGE_SIDE} × {IMAGE_SIDE} PNG")
                except EXPECTED as err:
                    note = message(str(err), "error")
            args = list(args)
            args[len(extra)] = prepared
            return (prepared, note, prepared, *show_config(*args))

        upload.change(accept, [upload, *inputs], [image, upload_msg, thumb, *config_outputs], show_progress="hidden")


# ---- the job panel ---------------------------------------------------------------------------
def job_text(job: Optional[Job]) -> str:
    """The job panel's line: state, step, it/s, losses, and how long the first step took."""
    if job is None:
        return "No job yet: set up a run in a tab above and press **Run**."
    parts = [f"**job {job.id}** · {html.escape(job.label)} · **{job.status}**"]
    if job.step:
        parts.append(f"step {job.step}/{job.total or '?'}")
    elif job.status == "running":
        parts.append("starting: building the system")
    if job.rate:
        parts.append(job.rate)
    if job.losses:
        parts.append(", ".join(f"{html.escape(k)} = {v:.4g}" for k, v in job.losses.items()))
    if job.first_step_at is not None:
        parts.append(f"first step {job.first_step_at - job.submitted:.1f} s after submission")
    if job.folder is not None:
        parts.append(f"run folder `{html.escape(str(job.folder))}`")
    if job.status == "cancelled":
        parts.append("stopped: its last checkpoint is kept (Resume continues it)")
    if job.status == "failed":
        last = log_tail(job, 1)
        parts.append(f"exit status {job.returncode}: {html.escape(last[-500:])}")
    return " · ".join(parts)


def jobs_table(queue: JobQueue) -> list[list]:
    with queue.lock:
        jobs = list(queue.jobs)
    return [[j.id, j.label, j.status, f"{j.step}/{j.total or '?'}", j.rate] for j in reversed(jobs)]


def loss_frame(rows: list[tuple[int, str, float]]):
    """``(step, loss name, value)`` rows as the loss plots' table; None without rows (a plot
    that once showed an empty table draws no lines afterwards)."""
    import pandas as pd

    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", "loss", "value"]).astype({"step": "int64", "value": "float64"})


def history_frame(job: Optional[Job]):
    """The losses a job's progress bar showed so far."""
    return loss_frame([] if job is None else [(step, key, value) for step, scalars in sorted(job.history.items())
                                              for key, value in scalars.items() if "loss" in key])


# ---- the results panel -----------------------------------------------------------------------
SVG_PREVIEW_BYTES = 2 * 2**20


def svg_gallery(svgs: list[Path]) -> str:
    """The SVG files as pictures drawn by the browser itself. As ``<img>`` data, an SVG cannot run
    scripts or load anything, whatever it holds."""
    figures = []
    for path in svgs:
        if path.stat().st_size <= SVG_PREVIEW_BYTES:
            data = base64.b64encode(path.read_bytes()).decode()
            figures.append(f'<figure style="display:inline-block;margin:4px"><img alt="{html.escape(path.name)}" '
                           f'src="data:image/svg+xml;base64,{data}" style="width:160px;height:160px;'
                           f'border:1px solid #ddd"><figcaption>{html.escape(path.name)}</figcaption></figure>')
    return "".join(figures)


def show_results(ctx: Context, name: Optional[str]) -> tuple:
    """The results panel's values for the run folder the page calls ``name``; the parts a run
    has nothing for are hidden."""
    folder = run_folder(ctx.outputs, name) if name else None
    if folder is None:
        text = message(f"no run folder {name!r} under the outputs folder", "error") if name else \
            "Open a run: from the job panel when it ends, or from the **Runs** tab."
        hidden = gr.update(value=None, visible=False)
        return (text, hidden, hidden, hidden, gr.update(choices=[], value=None, visible=False), None, hidden, hidden,
                hidden, hidden, hidden, gr.update(visible=False))
    res = results(ctx.outputs, folder)
    info = res.info
    title = (f"### {html.escape(info.name)}\n{html.escape(info.system)}" +
             (f" · “{html.escape(info.prompt)}”" if info.prompt else "") +
             (f" · {html.escape(info.detail)}" if info.detail else "") +
             f" · **{info.status}**" + (f" at step {info.step}" if info.step is not None else ""))
    losses = loss_frame(loss_rows(ctx.outputs, folder))
    meshes = [p.name for p in res.meshes]
    resumable = info.status != "finished" and info.has_checkpoint and not ctx.queue.running_in(folder)

    def shown(value, present) -> dict:
        return gr.update(value=value, visible=bool(present))

    return (title, shown([str(p) for p in res.pictures], res.pictures),
            shown([str(p) for p in res.turntables], res.turntables), shown(svg_gallery(res.svgs), res.svgs),
            gr.update(choices=meshes, value=meshes[0] if meshes else None, visible=len(meshes) > 1),
            str(res.meshes[0]) if res.meshes else None,
            shown(str(res.videos[0]) if res.videos else None, res.videos),
            shown(tuple(str(p) for p in res.before_after) if res.before_after else None, res.before_after),
            shown(res.metrics, res.metrics), shown(losses, losses is not None),
            shown([str(p) for p in res.downloads], res.downloads), gr.update(visible=resumable))


def run_choices(infos: list[RunInfo]) -> list[tuple[str, str]]:
    return [(i.label, i.name) for i in infos]


def runs_table(infos: list[RunInfo]) -> list[list]:
    return [[i.name, i.system, i.prompt, i.detail, i.status, i.step if i.step is not None else ""] for i in infos]


# ---- the page --------------------------------------------------------------------------------
def build_app(outputs: Path, queue: JobQueue) -> gr.Blocks:
    """The page over ``outputs`` (the run folders), launching jobs on ``queue``."""
    ctx = Context(outputs.resolve(), queue)
    with gr.Blocks(title="scorestudio", analytics_enabled=False) as app:
        current_job = gr.State(None)       # this page's latest job
        shown = gr.State({})               # what the job panel shows: skip unchanged updates
        gr.Markdown("# scorestudio\nScore distillation from diffusion priors: set up a run, watch it train, "
                    f"look at the results. Runs are written under `{html.escape(str(ctx.outputs))}`.")
        with gr.Tabs(elem_id="tabs"):
            for task in T.TASKS.values():
                with gr.Tab(task.label, id=task.name, elem_id=f"tab-{task.name}"):
                    task_tab(task, ctx, current_job)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                infos = browse(ctx.outputs)
                with gr.Row():
                    system_filter = gr.Dropdown(["", *sorted({i.system for i in infos})], value="",
                                                label="system", allow_custom_value=True, elem_id="runs-system")
                    prompt_filter = gr.Textbox("", label="prompt or folder contains", elem_id="runs-prompt")
                    refresh = gr.Button("Refresh", elem_id="runs-refresh")
                table = gr.Dataframe(runs_table(infos), headers=["run", "system", "prompt", "detail", "status", "step"],
                                     interactive=False, elem_id="runs-table", max_height=320)
                with gr.Row():
                    pick = gr.Dropdown(run_choices(infos), value=None, label="run", elem_id="runs-pick", scale=4)
                    open_run = gr.Button("Open", variant="primary", elem_id="runs-open", scale=1)

        gr.Markdown("## Job")
        progress = gr.Markdown(job_text(None), elem_id="job-progress")
        with gr.Row():
            preview = gr.Image(label="latest validation picture", interactive=False, height=260, elem_id="job-preview")
            live = gr.LinePlot(None, x="step", y="value", color="loss", label="losses (live)",
                               height=260, elem_id="job-losses")
        with gr.Row():
            cancel = gr.Button("Cancel job", elem_id="job-cancel")
            job_msg = gr.Markdown("", elem_id="job-message", elem_classes="ss-message")
        with gr.Accordion("log and queue", open=False):
            log_box = gr.Code(label="the job's log (last lines)", interactive=False, elem_id="job-log")
            queue_table = gr.Dataframe([], headers=["job", "run", "status", "step", "speed"], interactive=False,
                                       elem_id="job-queue")

        gr.Markdown("## Results")
        opened = gr.State(None)            # the run folder the results panel shows (its page name)
        title = gr.Markdown(show_results(ctx, None)[0], elem_id="results-title")
        resume = gr.Button("Resume this run", visible=False, elem_id="results-resume")
        pictures = gr.Gallery(label="pictures", columns=4, height=300, object_fit="contain",
                              elem_id="results-pictures", visible=False)
        turntables = gr.Gallery(label="turntables and optimisation (GIF)", columns=4, height=260, object_fit="contain",
                                elem_id="results-turntables", visible=False)
        svgs = gr.HTML(label="SVG files", elem_id="results-svg", visible=False)
        with gr.Row():
            with gr.Column():
                mesh_pick = gr.Dropdown([], label="mesh", elem_id="results-mesh", visible=False)
                # Always visible: a Model3D shown after the page loaded never draws (Gradio 6.31).
                model = gr.Model3D(label="3-D viewer (the GLB of 3-D runs)", clear_color=(1.0, 1.0, 1.0, 1.0),
                                   height=360, elem_id="results-model")
            with gr.Column():
                video = gr.Video(label="turntable (MP4)", interactive=False, height=300, elem_id="results-video",
                                 visible=False)
                slider = gr.ImageSlider(label="before / after", type="filepath", interactive=False, height=300,
                                        elem_id="results-slider", visible=False)
        with gr.Row():
            metrics = gr.JSON(label="metrics", elem_id="results-metrics", visible=False)
            losses = gr.LinePlot(None, x="step", y="value", color="loss", label="losses (CSV log)",
                                 height=260, elem_id="results-losses", visible=False)
        files = gr.File(label="downloads: SVG, GLB/OBJ/PLY, GIF/MP4, metrics, config", file_count="multiple",
                        interactive=False, elem_id="results-files", visible=False)
        result_outputs = [title, pictures, turntables, svgs, mesh_pick, model, video, slider, metrics, losses, files,
                          resume]

        job_outputs = [progress, preview, live, log_box, queue_table, shown, opened]

        def tick(job_id: Optional[int], seen: dict):
            """The job panel's parts that changed since ``seen``; the results panel once, when the job ends."""
            job = queue.get(job_id)
            skip = [gr.skip() for _ in job_outputs + result_outputs]
            if job is None:
                return tuple(skip)
            picture = latest_preview(ctx.outputs, job.folder) if job.folder is not None else None
            now = {"text": job_text(job), "picture": str(picture) if picture else None, "loaded": seen.get("loaded")}
            name = _run_name(ctx, job)
            load = not job.active and name is not None and seen.get("loaded") != job.id
            if load:
                now["loaded"] = job.id
            if now == seen:
                return tuple(skip)
            text, chart, tail, table_rows = (gr.skip() for _ in range(4))
            if now["text"] != seen.get("text"):
                text, chart, tail, table_rows = now["text"], history_frame(job), log_tail(job), jobs_table(queue)
            picture_value = now["picture"] if now["picture"] != seen.get("picture") else gr.skip()
            opened_value = name if load else gr.skip()
            results_values = show_results(ctx, name) if load else tuple(gr.skip() for _ in result_outputs)
            return (text, picture_value, chart, tail, table_rows, now, opened_value, *results_values)

        timer = gr.Timer(TICK_S)
        timer.tick(tick, [current_job, shown], [*job_outputs, *result_outputs], show_progress="hidden")

        @guarded(None, box=0)
        def cancel_job(job_id: Optional[int]):
            return message(queue.cancel(job_id)) if job_id is not None else "no job to cancel"

        cancel.click(cancel_job, [current_job], [job_msg], show_progress="hidden")

        @guarded(None, KEEP, box=0)
        def resume_run(name: Optional[str]):
            folder = run_folder(ctx.outputs, name or "")
            if folder is None:
                raise ValueError(f"no run folder {name!r} to resume")
            job = queue.resume(folder, f"resume · {name}", results(ctx.outputs, folder).info.max_steps)
            return message(f"job {job.id} queued: resuming {name}"), job.id

        resume.click(resume_run, [opened], [job_msg, current_job], show_progress="hidden")

        def open_picked(name: Optional[str]):
            return (name, *show_results(ctx, name))

        open_run.click(open_picked, [pick], [opened, *result_outputs], show_progress="hidden")
        mesh_pick.change(lambda mesh, name: _mesh_in_run(ctx, name, mesh), [mesh_pick, opened], [model],
                         show_progress="hidden")

        def filter_runs(system: str, text: str):
            everything = browse(ctx.outputs)
            infos = matching(everything, system, text)
            return (runs_table(infos), gr.update(choices=run_choices(infos)),
                    gr.update(choices=["", *sorted({i.system for i in everything})]))

        for trigger in (refresh.click, system_filter.change, prompt_filter.submit):
            trigger(filter_runs, [system_filter, prompt_filter], [table, pick, system_filter], show_progress="hidden")

        def pick_row(event: gr.SelectData):
            """A click in the runs table picks that row's run."""
            return event.row_value[0] if event.row_value else gr.skip()

        table.select(pick_row, None, pick, show_progress="hidden")
    return app


def _run_name(ctx: Context, job: Optional[Job]) -> Optional[str]:
    """The page's name of a job's run folder (None before the run printed it)."""
    if job is None or job.folder is None:
        return None
    folder = job.folder if job.folder.is_absolute() else Path.cwd() / job.folder
    try:
        return folder.resolve().relative_to(ctx.outputs).as_posix()
    except ValueError:
        return None


def _mesh_in_run(ctx: Context, name: Optional[str], mesh: Optional[str]):
    """The opened run's GLB that the mesh picker names (None if it names none)."""
    folder = run_folder(ctx.outputs, name or "")
    if folder is None or not mesh:
        return None
    return next((str(p) for p in results(ctx.outputs, folder).meshes if p.name == mesh), None)


def launch(app: gr.Blocks, outputs: Path, host: str, port: int, share: bool) -> None:
    """Serve the page (blocks until stopped). Of this machine's files, those under ``outputs``
    only are served (and Gradio's own cache of them); uploads above MAX_UPLOAD_BYTES are refused."""
    app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=share, allowed_paths=[str(outputs.resolve())],
        max_file_size=MAX_UPLOAD_BYTES, show_error=False, ssr_mode=False, quiet=False,
        theme=gr.themes.Default(font=["sans-serif"], font_mono=["monospace"]), css=CSS)
