from scorestudio.cli import main

main()
