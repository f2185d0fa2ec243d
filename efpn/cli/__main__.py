"""``python -m efpn.cli`` (and ``torchrun -m efpn.cli``) runs the ``efpn`` command."""

from efpn.cli.main import main

main()
