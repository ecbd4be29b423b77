"""The web app of ``scorestudio ui``: launch runs from a browser, watch them train, look at results.

    pip install "scorestudio[ui]"
    scorestudio ui [--host 127.0.0.1] [--port 7860] [--outputs outputs] [--max-jobs 1] [--share]

Modules: :mod:`~scorestudio.ui.tasks` (the tabs' settings → a config), :mod:`~scorestudio.ui.jobs`
(the queue of training processes and their progress), :mod:`~scorestudio.ui.runs` (run folders:
browser and results, every served path checked), :mod:`~scorestudio.ui.uploads` (image uploads
checked before decoding) and :mod:`~scorestudio.ui.app` (the Gradio page). Only ``app`` imports
Gradio; the others are plain Python, testable without a browser.
"""
