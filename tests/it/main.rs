//! Integration tests against a real broker, etcd and PostgreSQL.
//!
//! `harness::trials` runs them: one set of infrastructure is started before
//! the tests and removed after them.

mod anycast;
mod auth;
mod broker_faults;
mod browser;
mod channel_stats;
mod channels;
mod client;
mod compose;
mod connection_events;
mod console;
mod coordinator;
mod etcd_pings;
mod etcd_stall;
mod failover;
mod freeze;
mod fuzz;
mod half_open;
mod history;
mod idp;
mod js_sdk;
mod leader_terms;
mod limits;
mod messaging;
mod outages;
mod persister;
mod presence;
mod publish;
mod python_sdk;
mod resume;
mod route_wait;
mod slow_recovery;
mod smoke;
mod stages;
mod store;
mod supervision;
mod versions;

use harness::tests;
use harness::trials::TestFn;
use std::process::ExitCode;

fn all_tests() -> Vec<(&'static str, TestFn)> {
    tests![
        smoke::broker_etcd_and_postgres_answer,
        compose::scale_to_three_and_chat_on_the_third,
        connection_events::every_connected_has_one_disconnected_after_a_drain_and_a_kill,
        idp::provider_tokens_of_each_algorithm_and_each_refusal,
        history::an_acknowledged_send_is_in_history_at_once,
        failover::a_crashed_server_is_replaced_long_before_its_lease_ends,
        freeze::a_server_woken_from_a_freeze_serves_its_partitions_again,
        stages::a_delivered_message_moves_every_stage,
        idp::keys_rotate_survive_an_outage_and_refresh_mid_session,
        presence::presence_and_watch_across_two_servers,
        presence::a_drain_does_not_flap_and_a_kill_reports_offline,
        presence::channel_presence_lists_and_joins_over_three_servers,
        client::client_resumes_and_dedupes_across_a_drain,
        client::cli_route_send_tail_and_history,
        client::slow_app_gets_everything_after_4004,
        half_open::half_open_connections_are_noticed_by_both_ends,
        client::rate_limited_sends_are_retried_without_a_burst,
        browser::two_browser_users_chat_and_survive_a_drain,
        browser::browser_channel_panel_recovers_after_a_drain,
        browser::browser_shows_contacts_online_and_who_is_watching,
        js_sdk::js_sdk_in_node_delivers_exactly_once_across_failures,
        js_sdk::js_sdk_presence_in_node,
        js_sdk::js_sdk_anycast_in_node,
        python_sdk::python_sdk_delivers_exactly_once_across_failures,
        python_sdk::python_sdk_api_and_unit_tests,
        console::console_shows_the_map_and_drains_a_server,
        js_sdk::js_sdk_in_chromium_delivers_exactly_once_across_failures,
        coordinator::three_servers_join_drain_and_crash,
        coordinator::leader_failover_keeps_routes_and_fences_stale_writes,
        coordinator::new_leader_waits_a_ttl_for_the_servers_of_its_map,
        coordinator::long_poll_returns_on_change_and_times_out,
        leader_terms::a_new_term_publishes_while_the_broker_does_not_answer,
        route_wait::a_slow_but_leased_server_holds_a_lookup_no_longer_than_its_lease,
        route_wait::a_lookup_waits_past_a_lapsed_lease_for_the_move,
        route_wait::lookups_during_a_lease_s_last_second_wait_for_the_move,
        coordinator::route_api_validates_and_answers,
        broker_faults::broker_pause_answers_and_recovers,
        broker_faults::overload_refuses_early_and_recovers,
        messaging::dm_and_group_reach_every_device,
        messaging::resume_on_new_owner_after_partition_moved,
        messaging::bad_input_gets_its_code,
        messaging::history_pages_return_every_message_once,
        messaging::drain_under_traffic_loses_nothing,
        messaging::lost_lease_closes_sessions_and_reregisters,
        messaging::dashboard_queries_only_exported_metrics,
        outages::etcd_down_30s_keeps_sessions_and_the_map,
        outages::postgres_down_30s_degrades_and_recovers,
        etcd_pings::quiet_etcd_connections_are_not_closed_for_their_pings,
        etcd_stall::keep_alive_tells_a_lost_lease_from_a_stalled_etcd,
        etcd_stall::etcd_stall_longer_than_the_lease_recovers_by_itself,
        etcd_stall::etcd_stall_shorter_than_the_lease_changes_nothing,
        resume::synced_follows_everything_acked_before_hello,
        resume::a_resume_herd_waits_for_a_busy_postgres,
        supervision::a_dying_task_is_never_a_silent_zombie,
        versions::a_record_too_new_is_never_skipped,
        limits::limits_refuse_past_the_bound_and_keep_sessions,
        limits::connection_limit_fits_the_open_file_limit,
        fuzz::ten_thousand_random_frames_leave_the_server_and_others_fine,
        auth::expired_tokens_close_unless_refreshed,
        publish::backends_publish_with_api_keys,
        store::a_batch_written_twice_is_stored_once_and_offsets_only_advance,
        store::history_pages_and_conversations_read_back,
        store::sessions_and_last_seen_from_connection_events,
        store::contacts_are_group_members_and_dm_partners_who_wrote,
        store::open_subscriptions_follow_subscribe_unsubscribe_and_disconnect,
        channels::channels_are_authorized_limited_and_served,
        anycast::anycast_spreads_over_six_subscribers_once_each,
        anycast::anycast_loses_nothing_when_a_subscribers_server_is_killed,
        anycast::anycast_waits_for_a_first_subscriber,
        channels::channel_recovery_says_when_the_log_was_trimmed,
        slow_recovery::a_slow_channel_recovery_keeps_the_connection_alive,
        channels::channel_subscribers_lose_nothing_across_drain_and_crash,
        channel_stats::channel_stats_add_up_over_three_servers,
        persister::exactly_once_across_kills_and_replicas,
        persister::recovers_by_itself_after_a_postgres_outage,
    ]
}

fn main() -> ExitCode {
    harness::trials::main(all_tests())
}
