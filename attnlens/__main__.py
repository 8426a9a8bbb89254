from attnlens.cli import main

main()
