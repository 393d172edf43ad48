-- Scale-out over a Kafka consumer group with the eager protocol (librdkafka's
-- default range,roundrobin): every member gives up all its partitions at each
-- change. See support/kafka_group.lua for the scenarios and what the mock
-- does differently from a broker.
--
-- Survivors' duplicates: the mock refuses commits from the moment a change
-- begins, so the batches a survivor finishes between then and its revoke
-- (about one heartbeat plus the batches in flight: at 400 records/s per
-- member, up to some hundreds) are read again where their partitions moved.
-- A real broker takes those commits: none.
require("support.kafka_group").scenarios({ describe = describe, it = it, setup = setup,
                                             teardown = teardown }, "eager", "range,roundrobin", { survivor_dups = 1200 })
