"""The gallery's parts: ``pages`` (the HTML, escaped, no JavaScript needed), ``monitor``
(the status and failures pages, read from the ledger) and ``files``
(writing through folder handles that never follow a symlink). ``imgq.publish`` is the step
that builds a gallery from the ledger with them. May import store, original and errors.
"""
