"""`emodetect serve`: an HTTP API and an offline web page over `emodetect.inference.Analyzer`.

Needs the `serve` extra (`pip install "emodetect[serve]"`). `app.create_app` builds the FastAPI app;
`server.serve` runs it with uvicorn. Importing this package imports neither.
"""
