-- Scale-out over a Kafka consumer group with cooperative-sticky: members keep
-- their partitions through a change and give up only those that move, in a
-- revoke that runs once the new generation is up (its commits are taken even
-- by the mock). So a stop or a join duplicates nothing.
require("support.kafka_group").scenarios({ describe = describe, it = it, setup = setup,
                                             teardown = teardown }, "cooperative", "cooperative-sticky",
                                         { survivor_dups = 0 })
