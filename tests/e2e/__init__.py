"""End-to-end tier: every notebook executed by papermill, and the real-browser tests (JupyterLab in headless
Chromium)."""
