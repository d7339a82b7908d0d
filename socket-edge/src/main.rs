//! The socket-edge process: reads its configuration and runs the edge until SIGTERM or Ctrl-C
//! (the wiring is [`socket_edge::startup`]'s).

use socket_edge::startup::{Application, Config};

fn main() -> anyhow::Result<()> {
    let config: Config = telemetry::parse_config();
    telemetry::init_logs(&config.log);
    config.runtime()?.block_on(async {
        Application::build(&config)
            .await?
            .run_until_stopped(telemetry::shutdown_signal())
            .await;
        Ok(())
    })
}
