from catdog_model.cli import main

main()
