//! Plumbing every agent binary needs: logging and stop signals.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Keeps the log file writer flushing; hold it until the process exits.
#[derive(Debug)]
pub struct LogGuard(
    // Dropping the guard flushes and stops the writer thread.
    #[expect(dead_code, reason = "held for its Drop")]
    Option<tracing_appender::non_blocking::WorkerGuard>,
);

/// Logs to stderr, and to rolling files when `file` is set, filtered by
/// `RUST_LOG` (default `info`). Colours only on a terminal, never with
/// `NO_COLOR` set, and never in files.
///
/// # Errors
/// If the log directory cannot be created or opened.
pub fn init_logging(file: Option<&config::LogConfig>) -> Result<LogGuard, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stderr = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let (file_layer, guard) = match file {
        Some(log) => {
            let rotation = match log.rotation {
                config::LogRotation::Minutely => tracing_appender::rolling::Rotation::MINUTELY,
                config::LogRotation::Hourly => tracing_appender::rolling::Rotation::HOURLY,
                config::LogRotation::Daily => tracing_appender::rolling::Rotation::DAILY,
                config::LogRotation::Never => tracing_appender::rolling::Rotation::NEVER,
            };
            let mut builder = tracing_appender::rolling::Builder::new()
                .rotation(rotation)
                .filename_prefix(&log.file_prefix)
                .filename_suffix("log");
            if let Some(n) = log.max_files {
                builder = builder.max_log_files(n);
            }
            std::fs::create_dir_all(&log.dir)
                .map_err(|e| format!("log directory {}: {e}", log.dir.display()))?;
            let appender = builder
                .build(&log.dir)
                .map_err(|e| format!("log directory {}: {e}", log.dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (
                Some(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer)),
                Some(guard),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file_layer).try_init();
    Ok(LogGuard(guard))
}

/// Resolves on the first SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_requested() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Waits for a shutdown request (as [`shutdown_requested`]), running
/// `on_hangup` for each SIGHUP meanwhile (`systemctl reload`). From the
/// call on, SIGHUP no longer ends the process; where it cannot be handled,
/// only shutdown is awaited.
pub async fn until_shutdown<F, Fut>(mut on_hangup: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let shutdown = shutdown_requested();
    tokio::pin!(shutdown);
    loop {
        #[cfg(unix)]
        let hangup = async {
            let received = match &mut hangups {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            if !received {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = &mut shutdown => return,
            () = hangup => on_hangup().await,
        }
    }
}

/// This machine's host name (Linux), for messages and the enrolment
/// exchange; `None` when it cannot be read.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
