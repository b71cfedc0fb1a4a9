from taxi_mlops.gateway.app import main

main()
