"""The web app (``break-a-scene ui``): the page in ``app`` and ``tabs`` (gradio), its logic in plain modules.

No module here but ``app`` and ``tabs`` imports gradio, so the tests of the logic run without a browser or a
server. Read top to bottom:

* ``binding``: the address the server listens on (loopback unless asked);
* ``names``: run names, handle names, prompts built from handle chips;
* ``mask_inputs`` and ``clicks``: brush layers and mask files -> ``(H, W)`` bool masks; clicks -> SAM point
  groups and boxes;
* ``runs``: the run folders the app knows (finished, resumable), the inputs saved for resuming, zips;
* ``messages``: every text the page shows, escaped for where it goes (toasts, Markdown);
* ``training_defaults`` and ``estimate``: the Extract tab's defaults, which follow the model, and the estimated
  duration of a run from measured step times;
* ``training_status`` and ``training_worker``: one ``extract`` at a time in a thread, its status after every
  step, stopped at the next step when cancelled;
* ``loaded_models``: the pipeline and segmentation models kept loaded between clicks.
"""
