"""A Sphinx extension: a page built in the smoke profile says so where nobody can miss it.

A chapter built in the smoke profile displays a warning from `cifar_tl.book.pages.page_header` (a Markdown block
quote that starts with "Warning: smoke profile.", so JupyterLab and Colab show it too). In the built book this
lifts that warning to the top of the page, under the title, as a warning banner, and adds " (smoke)" to the
page's entry in the table of contents (Sphinx takes it from the page's own first title, which shows it too) and to
the previous/next links.
"""

from docutils import nodes

MARKER = "Warning: smoke profile."  # cifar_tl.book.pages.SMOKE_BANNER
TOC_MARK = " (smoke)"


def _smoke_warning(doctree):
    for quote in doctree.findall(nodes.block_quote):
        if quote.astext().strip().startswith(MARKER):
            return quote
    return None


def _lift(app, doctree):
    quote = _smoke_warning(doctree)
    if quote is None:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        return
    banner = nodes.admonition(classes=["warning", "smoke-banner"])
    banner += nodes.title(text="Built in the smoke profile: its numbers are not meaningful")
    for child in quote.children:
        banner += child.deepcopy()
    quote.parent.remove(quote)
    section.insert(1, banner)
    docname = app.env.docname
    title = app.env.titles.get(docname)
    if title is not None and not title.astext().endswith(TOC_MARK):  # the previous/next links
        marked = title.deepcopy()
        marked += nodes.Text(TOC_MARK)
        app.env.titles[docname] = marked
    toc = app.env.tocs.get(docname)  # the table of contents takes a page's entry from its own toc: its first title
    first = next(iter(toc.findall(nodes.reference)), None) if toc is not None else None
    if first is not None and not first.astext().endswith(TOC_MARK):
        first += nodes.Text(TOC_MARK)


def setup(app):
    # After Sphinx's own title and toc collectors (priority 500) have stored the page's title and toc.
    app.connect("doctree-read", _lift, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
