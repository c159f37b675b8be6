from speccyd.cli import main

main()
