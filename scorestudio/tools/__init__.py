"""The command-line tools: one module per ``scorestudio <command>``, each with ``main(argv)``
(the table is :data:`scorestudio.cli.COMMANDS`). Library code never imports from here."""
