"""The gallery's parts: ``pages`` (the HTML, escaped, no JavaScript needed), ``monitor``
(the status and failures pages, read from the ledger), ``files``
(writing through folder handles that never follow a symlink), ``photos`` (what a gallery
shows, read from the ledger: publish's options and report, slugs, the photos and their
image files) and ``write`` (writing OUT against its manifest). ``imgq.publish`` is the step
that builds a gallery from the ledger with them. May import ledger, config, store,
original and errors.
"""
