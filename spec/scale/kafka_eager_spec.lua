-- Scale-out over a Kafka consumer group with the eager protocol (librdkafka's
-- default range,roundrobin): every member gives up all its partitions at each
-- change. See support/kafka_group.lua for the scenarios and what the mock
-- does differently from a broker.
--
-- Survivors' duplicates: the mock refuses commits from the moment a change
-- begins, so the batches a survivor finishes between then and its revoke
-- (a heartbeat, 0.5 s, plus the batches in flight, up to 1 s: at 400
-- records/s for each of up to three members, at most about 1200) are read
-- again where their partitions moved. A real broker takes those commits.
require("support.kafka_group").scenarios({ describe = describe, it = it, setup = setup,
                                           teardown = teardown },
                                         "eager", "range,roundrobin",
                                         { kill = 1200, stop = 1200, join = 1200 })
