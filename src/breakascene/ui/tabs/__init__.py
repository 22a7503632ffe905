"""The web app's page, one module per tab: each builds its tab's components, wires them, and holds the handlers
they call (joined into :class:`breakascene.ui.app.App`). ``toasts`` turns a handler's failures into toasts."""
