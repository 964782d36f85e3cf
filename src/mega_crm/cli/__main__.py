"""`python -m mega_crm.cli`: the `mega-crm` command."""

from mega_crm.cli import main

main()
