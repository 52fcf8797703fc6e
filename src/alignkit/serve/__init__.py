"""``alignkit serve``: an OpenAI-compatible chat endpoint for any policy folder."""
