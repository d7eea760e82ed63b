from prokt_deploy.cli.main import main

main()
