"""A Sphinx extension: drop duplicate script entries from each page, keeping the first.

With Sphinx 7.4, jupyter-book 1 and sphinx-thebe, the inline `const THEBE_JS_URL = ...` script is
registered twice, and the browser rejects the second `const` with a JavaScript error on every page.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    files = context.get("script_files")
    if not isinstance(files, list):
        return
    seen, unique = set(), []
    for script in files:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    files[:] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
