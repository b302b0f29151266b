"""The HTTP side: FastAPI app, routes, access control, audit, metrics and its uvicorn server."""
